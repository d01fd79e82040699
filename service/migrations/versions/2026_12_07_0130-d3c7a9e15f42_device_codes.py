"""Device login (RFC 8628): the device codes and their state.

Revision ID: d3c7a9e15f42
Revises: a41c0e7d9b52
Create Date: 2026-12-07 01:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'd3c7a9e15f42'
down_revision: str | None = 'a41c0e7d9b52'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'device_codes',
        sa.Column('code_hash', sa.String(length=64), nullable=False),
        sa.Column('user_code', sa.String(length=8), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=True),
        sa.Column('scope', sa.String(length=1000), server_default='', nullable=False),
        sa.Column('device', sa.String(length=200), nullable=True),
        sa.Column('ip', sa.String(length=64), nullable=True),
        sa.Column('user_agent', sa.String(length=400), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('interval', sa.Integer(), nullable=False),
        sa.Column('last_polled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('session_id', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('code_hash'),
        sa.UniqueConstraint('user_code'),
    )
    op.create_index('ix_device_codes_expires_at', 'device_codes', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_device_codes_expires_at', 'device_codes')
    op.drop_table('device_codes')
