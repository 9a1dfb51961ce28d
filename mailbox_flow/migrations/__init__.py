"""Alembic migrations for mailbox_flow's tables, shipped inside the package.

Apply them with ``mailbox-flow db upgrade`` or `mailbox_flow.migrate.upgrade`. The version table is
``mailbox_flow_alembic_version`` so that it never collides with a partner's own ``alembic_version``.
"""
