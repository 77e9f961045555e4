"""The demo: a sample CRM/sales master on SQLite, a replica for a field worker, edits on both sides that
produce every conflict kind, and a sync with one manual module and automatic ones.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import records
from sync_pipeline.engine.checkout import checkout
from sync_pipeline.engine.errors import BadInputError
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.settings import parse_settings

DEMO_SETTINGS = """\
# Demo settings: people decide CRM conflicts; sales conflicts are settled automatically.
modules:
  crm:
    policy: manual
    tables:
      company:
        modified_column: updated_at
      contact:
        natural_key: [email]        # a local insert with an existing email is a duplicate
        modified_column: updated_at
      activity: {}
  sales:
    policy: newest_wins             # field by field, the later change wins
    tables:
      order: {}
      order_line:
        policy: local_wins          # the field worker's order lines win
"""

CITIES = ["Berlin", "Hamburg", "München", "Köln", "Zürich", "Wien", "Graz", "Basel", "Linz", "Bremen"]
PRODUCTS = ["Widget", "Gadget", "Sprocket", "Gizmo", "Doohickey", "Flange", "Bracket"]


def demo_metadata() -> sa.MetaData:
    metadata = sa.MetaData()
    sa.Table(
        "company",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("city", sa.String(80)),
        sa.Column("updated_at", sa.DateTime),
    )
    sa.Table(
        "contact",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("company_id", sa.Integer, sa.ForeignKey("company.id"), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("email", sa.String(200), unique=True),
        sa.Column("phone", sa.String(40)),
        sa.Column("updated_at", sa.DateTime),
    )
    sa.Table(
        "activity",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("contact_id", sa.Integer, sa.ForeignKey("contact.id"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("due_date", sa.Date),
        sa.Column("done", sa.Boolean, nullable=False, default=False),
    )
    sa.Table(
        "order",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("company_id", sa.Integer, sa.ForeignKey("company.id"), nullable=False),
        sa.Column("order_date", sa.Date, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total", sa.Numeric(12, 2)),
    )
    sa.Table(
        "order_line",
        metadata,
        sa.Column("order_id", sa.Integer, sa.ForeignKey("order.id"), primary_key=True),
        sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("product", sa.String(100), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(10, 2), nullable=False),
    )
    return metadata


def build_master(engine: Engine, companies: int = 200, seed: int = 7) -> None:
    """Create and fill the sample tables (a few thousand rows)."""
    rng = random.Random(seed)
    metadata = demo_metadata()
    metadata.create_all(engine)
    t = metadata.tables
    start = dt.datetime(2026, 1, 5, 9, 0)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t["company"]),
            [
                {"id": i, "name": f"Firma {i} GmbH", "city": rng.choice(CITIES), "updated_at": start}
                for i in range(1, companies + 1)
            ],
        )
        contacts = [
            {
                "id": i,
                "company_id": (i - 1) // 3 + 1,
                "name": f"Kontakt {i}",
                "email": f"contact{i}@example.com",
                "phone": f"+49 30 {100000 + i}",
                "updated_at": start,
            }
            for i in range(1, companies * 3 + 1)
        ]
        conn.execute(sa.insert(t["contact"]), contacts)
        conn.execute(
            sa.insert(t["activity"]),
            [
                {
                    "id": i,
                    "contact_id": rng.randint(1, len(contacts)),
                    "kind": rng.choice(["call", "visit", "mail"]),
                    "note": f"Notiz {i} — Café",
                    "due_date": dt.date(2026, 2, 1) + dt.timedelta(days=i % 90),
                    "done": i % 4 == 0,
                }
                for i in range(1, int(companies * 7.5) + 1)
            ],
        )
        orders = companies * 2
        conn.execute(
            sa.insert(t["order"]),
            [
                {
                    "id": i,
                    "company_id": rng.randint(1, companies),
                    "order_date": dt.date(2026, 1, 1) + dt.timedelta(days=i % 60),
                    "status": "open",
                    "total": Decimal("0.00"),
                }
                for i in range(1, orders + 1)
            ],
        )
        conn.execute(
            sa.insert(t["order_line"]),
            [
                {
                    "order_id": o,
                    "line_no": n,
                    "product": rng.choice(PRODUCTS),
                    "quantity": rng.randint(1, 20),
                    "unit_price": Decimal(rng.randint(100, 9999)) / 100,
                }
                for o in range(1, orders + 1)
                for n in range(1, 4)
            ],
        )


@dataclass
class DemoPaths:
    home: Path
    master: Path
    settings: Path
    replica: Path

    @property
    def master_url(self) -> str:
        return f"sqlite:///{self.master}"


def prepare_demo(home: Path, owner: str, force: bool = False) -> DemoPaths:
    """Build the demo master, initialise it, and check out a replica for `owner`."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: master, replicas and inbox hold company data
    (home / "replicas").mkdir(mode=0o700, exist_ok=True)
    (home / "inbox").mkdir(mode=0o700, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in owner.lower()).strip("-") or "owner"
    paths = DemoPaths(home, home / "master.db", home / "demo-settings.yaml", home / "replicas" / f"demo-{slug}.db")
    if paths.master.exists() and not force and not _is_demo_master(paths.master):
        raise BadInputError(
            f"{paths.master} exists and is not a demo master: the demo will not overwrite it",
            "set SYNC_HOME to another folder, or pass --force to replace it",
        )
    for file in (paths.master, paths.replica):
        file.unlink(missing_ok=True)
    paths.settings.write_text(DEMO_SETTINGS, encoding="utf-8")
    engine = connect_master(paths.master_url, must_exist=False)
    try:
        build_master(engine)
        init_master(engine, parse_settings(DEMO_SETTINGS, str(paths.settings)))
        with engine.begin() as conn:
            records.write_meta(conn, {"demo": "true"})
        checkout(engine, paths.replica, owner)
    finally:
        engine.dispose()
    return paths


def _is_demo_master(path: Path) -> bool:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        return records.read_meta(engine).get("demo") == "true"
    except Exception:
        return False
    finally:
        engine.dispose()


def make_demo_edits(master_engine: Engine, replica_path: Path) -> None:
    """Edits on both sides that produce every conflict kind (see the comments for which)."""
    t = demo_metadata().tables
    replica = sa.create_engine(f"sqlite:///{replica_path}")
    early = dt.datetime(2026, 3, 1, 8, 0)
    late = dt.datetime(2026, 3, 2, 17, 0)
    # Master edits made before the field worker's: on newest_wins tables the local side wins these.
    with master_engine.begin() as m:
        m.execute(sa.update(t["order"]).where(t["order"].c.id == 2).values(status="confirmed"))
    try:
        with replica.begin() as r:
            # crm / update_update: both change the phone of contact 1.
            r.execute(
                sa.update(t["contact"]).where(t["contact"].c.id == 1).values(phone="+49 170 1111111", updated_at=early)
            )
            # crm / no conflict: local changes the phone of contact 2, the master its name: both kept.
            r.execute(sa.update(t["contact"]).where(t["contact"].c.id == 2).values(phone="+49 170 2222222"))
            # crm / convergent: both move company 3 to Berlin.
            r.execute(sa.update(t["company"]).where(t["company"].c.id == 3).values(city="Berlin"))
            # crm / update_delete: local edits activity 10, the master deletes it.
            r.execute(sa.update(t["activity"]).where(t["activity"].c.id == 10).values(note="Rückruf vereinbart"))
            # crm / delete_update: local deletes activity 11, the master marks it done.
            r.execute(sa.delete(t["activity"]).where(t["activity"].c.id == 11))
            # crm / remap: a new company; the master also creates one and takes the same id.
            new_company = r.execute(
                sa.insert(t["company"])
                .values(name="Neukunde AG", city="Graz", updated_at=early)
                .returning(t["company"].c.id)
            ).scalar_one()
            r.execute(
                sa.insert(t["contact"]).values(
                    company_id=new_company, name="Erika Neu", email="erika@neukunde.example", phone="+43 316 000"
                )
            )
            # crm / duplicate: a new contact whose email the master has meanwhile, with an activity.
            dup = r.execute(
                sa.insert(t["contact"])
                .values(company_id=5, name="Lead (local)", email="lead@example.com", phone="+49 171 555")
                .returning(t["contact"].c.id)
            ).scalar_one()
            r.execute(
                sa.insert(t["activity"]).values(
                    contact_id=dup, kind="call", note="Erstkontakt", due_date=dt.date(2026, 3, 10), done=False
                )
            )
            # crm / orphan: an activity for contact 20, whom the master deletes.
            r.execute(
                sa.insert(t["activity"]).values(
                    contact_id=20, kind="visit", note="Besuch", due_date=dt.date(2026, 3, 12), done=False
                )
            )
            # sales / update_update (newest_wins): order 2's status; the master changed it earlier.
            r.execute(sa.update(t["order"]).where(t["order"].c.id == 2).values(status="shipped"))
            # sales / update_update (newest_wins): order 4's status; the master changes it later.
            r.execute(sa.update(t["order"]).where(t["order"].c.id == 4).values(status="cancelled"))
            # sales / insert_insert (local_wins on order_line): both add line 4 to order 1.
            r.execute(
                sa.insert(t["order_line"]).values(
                    order_id=1, line_no=4, product="Widget", quantity=5, unit_price=Decimal("12.50")
                )
            )
            # sales / delete_update (local_wins on order_line): local deletes line 2 of order 3.
            r.execute(sa.delete(t["order_line"]).where(t["order_line"].c.order_id == 3, t["order_line"].c.line_no == 2))
            # sales / plain changes: a new order with two lines, a changed order total.
            order = r.execute(
                sa.insert(t["order"])
                .values(company_id=new_company, order_date=dt.date(2026, 3, 2), status="open", total=Decimal("99.90"))
                .returning(t["order"].c.id)
            ).scalar_one()
            r.execute(
                sa.insert(t["order_line"]),
                [
                    {
                        "order_id": order,
                        "line_no": 1,
                        "product": "Gizmo",
                        "quantity": 2,
                        "unit_price": Decimal("19.95"),
                    },
                    {
                        "order_id": order,
                        "line_no": 2,
                        "product": "Flange",
                        "quantity": 6,
                        "unit_price": Decimal("10.00"),
                    },
                ],
            )
            r.execute(sa.update(t["order"]).where(t["order"].c.id == 6).values(total=Decimal("1234.56")))
    finally:
        replica.dispose()
    with master_engine.begin() as m:
        m.execute(sa.update(t["contact"]).where(t["contact"].c.id == 1).values(phone="+49 30 9999999", updated_at=late))
        m.execute(sa.update(t["contact"]).where(t["contact"].c.id == 2).values(name="Kontakt 2 (Einkauf)"))
        m.execute(sa.update(t["company"]).where(t["company"].c.id == 3).values(city="Berlin"))
        m.execute(sa.delete(t["activity"]).where(t["activity"].c.id == 10))
        m.execute(sa.update(t["activity"]).where(t["activity"].c.id == 11).values(done=True))
        m.execute(sa.insert(t["company"]).values(name="Zentrale Neuanlage KG", city="Wien", updated_at=late))
        m.execute(
            sa.insert(t["contact"]).values(
                company_id=7, name="Lead (master)", email="lead@example.com", phone="+49 30 555"
            )
        )
        m.execute(sa.delete(t["activity"]).where(t["activity"].c.contact_id == 20))
        m.execute(sa.delete(t["contact"]).where(t["contact"].c.id == 20))
        m.execute(sa.update(t["order"]).where(t["order"].c.id == 4).values(status="invoiced"))
        m.execute(
            sa.insert(t["order_line"]).values(
                order_id=1, line_no=4, product="Gadget", quantity=1, unit_price=Decimal("99.00")
            )
        )
        m.execute(
            sa.update(t["order_line"])
            .where(t["order_line"].c.order_id == 3, t["order_line"].c.line_no == 2)
            .values(quantity=42)
        )
