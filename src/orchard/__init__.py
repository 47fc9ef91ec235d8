"""Orchard — an open-source member-operations CRM (会员运营 CRM).

Domains live in sub-packages (org, auth, members, identity, events, tracking, audit); `app.create_app`
wires them into one FastAPI application and `cli.app` into one Typer command.
"""

__version__ = "0.1.0"
