"""API keys (their digests, never the keys) and the server secret they are digested under.

Revision ID: a7c3e1f05b92
Revises: d3c7a9e15f42
Create Date: 2026-12-07 01:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'a7c3e1f05b92'
down_revision: str | None = 'd3c7a9e15f42'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(16), primary_key=True),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(100), nullable=False),
        sa.Column('digest', sa.String(64), nullable=False, unique=True),
        sa.Column('scopes', sa.String(1000), nullable=False, server_default=''),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_used_ip', sa.String(64), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_why', sa.String(16), nullable=True),
    )
    op.create_index('ix_api_keys_user', 'api_keys', ['user_id'])
    op.create_table(
        'server_secrets',
        sa.Column('name', sa.String(64), primary_key=True),
        sa.Column('value', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('server_secrets')
    op.drop_index('ix_api_keys_user', table_name='api_keys')
    op.drop_table('api_keys')
