"""Service accounts: users get a kind; OAuth clients and their credential generations.

Revision ID: a41c0e7d9b52
Revises: a4c2e8f1b903
Create Date: 2026-12-07 01:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'a41c0e7d9b52'
down_revision: str | None = 'a4c2e8f1b903'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(
            sa.Column('kind', sa.String(length=16), server_default='person', nullable=False)
        )
    op.create_table(
        'oauth_clients',
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=150), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('scopes', sa.String(length=1000), server_default='', nullable=False),
        sa.Column('jwks', sa.Text(), nullable=True),
        sa.Column('disabled', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('client_id'),
        sa.UniqueConstraint('user_id'),
    )
    op.create_table(
        'oauth_client_credentials',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('secret_hash', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('retire_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('session_id', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(
        'ix_oauth_client_credentials_client_id', 'oauth_client_credentials', ['client_id']
    )


def downgrade() -> None:
    op.drop_index('ix_oauth_client_credentials_client_id', 'oauth_client_credentials')
    op.drop_table('oauth_client_credentials')
    op.drop_table('oauth_clients')
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_column('kind')
