"""Users: the look-alike skeleton of each name (Unicode TR 39), unique.

Existing rows are backfilled with the skeleton of their name's PRECIS
UsernameCaseMapped form (of the name as stored where it has none). Where
names kept before this revision already look alike, the first keeps the bare
skeleton and each later one gets its id appended, so the unique index can be
built and every existing user still logs in; no new look-alike can join them.

Revision ID: a4c2e8f1b903
Revises: 3e6b1f9a7d25
Create Date: 2026-12-07 01:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quart_tokengate.service.usernames import InvalidUsername, canonical, skeleton


revision: str = 'a4c2e8f1b903'
down_revision: str | None = '3e6b1f9a7d25'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _skeleton_of(name: str) -> str:
    try:
        return skeleton(canonical(name))
    except InvalidUsername:
        return skeleton(name)


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('username_skeleton', sa.String(length=1000), nullable=True))
    users = sa.table(
        'users', sa.column('id', sa.Integer), sa.column('username', sa.String),
        sa.column('username_skeleton', sa.String),
    )
    conn = op.get_bind()
    seen: set[str] = set()
    for user_id, name in conn.execute(sa.select(users.c.id, users.c.username).order_by(users.c.id)):
        value = _skeleton_of(name)
        if value in seen:
            value = f'{value}#{user_id}'
        seen.add(value)
        conn.execute(
            users.update().where(users.c.id == user_id).values(username_skeleton=value)
        )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('username_skeleton', existing_type=sa.String(length=1000), nullable=False)
        batch_op.create_unique_constraint('uq_users_username_skeleton', ['username_skeleton'])


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint('uq_users_username_skeleton', type_='unique')
        batch_op.drop_column('username_skeleton')
