"""The Python drivers and ORMs, each with its default settings and its usual
usage, as two clients of different tenants taking turns.

Run by e2e/pool_python_test.go, through pgtenant (both pool modes) and
straight against PostgreSQL (where the tenant comes from a startup option).
argv[1] is JSON: host, port, database, and per client (a, b): user,
password, tenant, names (its projects, comma-separated in id order) and
options (startup options, direct runs only). argv[2] names the checks to run
(comma-separated; all when absent). Prints {"results": [...]}: one entry per
check, with ok, detail and the SQLSTATE of the error that failed it.
"""

import asyncio
import json
import sys
import traceback

cfg = json.loads(sys.argv[1])
only = set(sys.argv[2].split(",")) if len(sys.argv) > 2 and sys.argv[2] else None
A, B = cfg["a"], cfg["b"]
PROBE = ("SELECT current_setting('app.tenant_id'), coalesce(string_agg(name, ',' ORDER BY id), '') "
         "FROM projects")
results = []


def check(name):
    def run(f):
        if only is not None and name not in only:
            return f
        try:
            detail = f()
            results.append({"check": name, "ok": True, "detail": str(detail or "")})
        except Exception as e:  # noqa: BLE001: every failure is reported
            code = getattr(e, "pgcode", None) or getattr(e, "sqlstate", None)
            orig = getattr(e, "orig", None)  # SQLAlchemy wraps the driver's error
            if code is None and orig is not None:
                code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
            results.append({"check": name, "ok": False, "sqlstate": code or "",
                            "detail": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"})
        return f
    return run


def want(c, row, what="probe"):
    tenant, names = row[0], row[1]
    if (str(tenant), names) != (c["tenant"], c["names"]):
        raise AssertionError(f"{what}: ran as {tenant} seeing {names!r}, want {c['tenant']} seeing {c['names']!r}")


def want_eq(got, expected, what):
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, want {expected!r}")


def dsn(c):
    s = (f"host={cfg['host']} port={cfg['port']} dbname={cfg['database']} "
         f"user={c['user']} password={c['password']}")
    if c.get("options"):
        s += f" options='{c['options']}'"
    return s


# psycopg2 -----------------------------------------------------------------

import psycopg2  # noqa: E402


@check("psycopg2")
def _():
    a, b = psycopg2.connect(dsn(A)), psycopg2.connect(dsn(B))
    # Default: every statement in a transaction the driver opens (BEGIN).
    for _ in range(3):
        for conn, c in ((a, A), (b, B)):
            with conn.cursor() as cur:
                cur.execute(PROBE)
                want(c, cur.fetchone())
                cur.execute("SELECT name FROM projects WHERE length(name) > %s ORDER BY id", (0,))
                want_eq(",".join(r[0] for r in cur.fetchall()), c["names"], "with a parameter")
            conn.commit()
    # An explicit isolation level in autocommit: SET default_transaction_isolation,
    # then back with SET default_transaction_isolation TO DEFAULT.
    a.autocommit = True
    a.set_session(isolation_level="SERIALIZABLE")
    with a.cursor() as cur:
        cur.execute("SHOW transaction_isolation")
        want_eq(cur.fetchone()[0], "serializable", "A after set_session")
    with b.cursor() as cur:
        cur.execute("SHOW transaction_isolation")
        want_eq(cur.fetchone()[0], "read committed", "B while A is serializable")
    b.commit()
    a.set_session(isolation_level="DEFAULT")
    with a.cursor() as cur:
        cur.execute("SHOW transaction_isolation")
        want_eq(cur.fetchone()[0], "read committed", "A back to the default")
        cur.execute(PROBE)
        want(A, cur.fetchone())
    a.close()
    b.close()


# SQLAlchemy with psycopg2 ---------------------------------------------------

import sqlalchemy  # noqa: E402
from sqlalchemy import Column, Integer, Text, create_engine, text  # noqa: E402
from sqlalchemy.orm import Session, declarative_base  # noqa: E402

Base = declarative_base()


class Project(Base):
    __tablename__ = "projects"
    id = Column(Integer, primary_key=True)
    name = Column(Text)


def engine(c):
    args = {"options": c["options"]} if c.get("options") else {}
    url = sqlalchemy.engine.URL.create("postgresql+psycopg2", username=c["user"], password=c["password"],
                                       host=cfg["host"], port=int(cfg["port"]), database=cfg["database"])
    return create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=0, connect_args=args)


@check("sqlalchemy")
def _():
    ea, eb = engine(A), engine(B)
    for _ in range(2):
        for e, c in ((ea, A), (eb, B)):
            with e.connect() as conn:
                want(c, conn.execute(text(PROBE)).one())
            with Session(e) as s:
                want_eq(",".join(p.name for p in s.query(Project).order_by(Project.id)), c["names"], "ORM query")
    # An isolation level for one checkout; the pool takes it back on return.
    with ea.connect() as conn:
        conn = conn.execution_options(isolation_level="SERIALIZABLE")
        want_eq(conn.execute(text("SHOW transaction_isolation")).scalar(), "serializable", "A serializable")
        want(A, conn.execute(text(PROBE)).one())
    with eb.connect() as conn:
        want_eq(conn.execute(text("SHOW transaction_isolation")).scalar(), "read committed", "B")
    with ea.connect() as conn:
        want_eq(conn.execute(text("SHOW transaction_isolation")).scalar(), "read committed", "A's next checkout")
        want(A, conn.execute(text(PROBE)).one())
    ea.dispose()
    eb.dispose()


# psycopg 3 -------------------------------------------------------------------

import psycopg  # noqa: E402


@check("psycopg3")
def _():
    a, b = psycopg.connect(dsn(A)), psycopg.connect(dsn(B))
    for _ in range(3):
        for conn, c in ((a, A), (b, B)):
            want(c, conn.execute(PROBE).fetchone())
            conn.commit()
    # Server-side prepared statements: prepared after prepare_threshold (5)
    # executions of a query.
    for n in range(10):
        for conn, c in ((a, A), (b, B)):
            row = conn.execute("SELECT current_setting('app.tenant_id'), %s::int + 1", (n,)).fetchone()
            want_eq((row[0], row[1]), (c["tenant"], n + 1), "prepared")
            conn.commit()
    a.close()
    b.close()


@check("psycopg3 prepared-statement cache")
def _():
    # More distinct prepared queries than the cache holds (prepared_max,
    # 100): psycopg evicts the oldest with SQL DEALLOCATE of the name it
    # prepared at protocol level.
    conn = psycopg.connect(dsn(A), autocommit=True)
    other = psycopg.connect(dsn(B), autocommit=True)
    for n in range(110):
        q = f"SELECT current_setting('app.tenant_id'), %s::int + {n}"
        for k in range(6):
            row = conn.execute(q, (k,)).fetchone()
            want_eq((row[0], row[1]), (A["tenant"], k + n), f"query {n}, execution {k}")
        if n % 10 == 0:
            want(B, other.execute(PROBE).fetchone())
    # The evicted statements prepare again.
    for n in range(3):
        row = conn.execute(f"SELECT current_setting('app.tenant_id'), %s::int + {n}", (1,)).fetchone()
        want_eq((row[0], row[1]), (A["tenant"], 1 + n), f"query {n} again")
    conn.close()
    other.close()


# asyncpg ---------------------------------------------------------------------

import asyncpg  # noqa: E402


def apg_args(c):
    args = dict(host=cfg["host"], port=int(cfg["port"]), user=c["user"], password=c["password"],
                database=cfg["database"])
    if c.get("tenant_setting"):
        args["server_settings"] = {"app.tenant_id": c["tenant"]}
    return args


async def apg_main():
    a, b = await asyncpg.connect(**apg_args(A)), await asyncpg.connect(**apg_args(B))
    for _ in range(3):
        for conn, c in ((a, A), (b, B)):
            want(c, await conn.fetchrow(PROBE))
            names = [r["name"] for r in await conn.fetch("SELECT name FROM projects WHERE length(name) > $1 ORDER BY id", 0)]
            want_eq(",".join(names), c["names"], "fetch with a parameter")
    stmt = await a.prepare("SELECT current_setting('app.tenant_id'), $1::int * 2")
    for n in range(3):
        want_eq(tuple(await stmt.fetchrow(n)), (A["tenant"], 2 * n), "prepared")
        want(B, await b.fetchrow(PROBE))
    # copy_records_to_table: Parse, Describe, Flush, then COPY as a Query.
    await a.execute("DELETE FROM driver_copy WHERE tenant = $1", A["tenant"])
    await a.copy_records_to_table("driver_copy", records=[(A["tenant"], i) for i in range(5)], columns=["tenant", "n"])
    want_eq(await a.fetchval("SELECT count(*) FROM driver_copy WHERE tenant = $1", A["tenant"]), 5, "copied rows")
    await a.execute("DELETE FROM driver_copy WHERE tenant = $1", A["tenant"])
    await a.close()
    await b.close()
    # The Pool resets every connection it takes back (pg_advisory_unlock_all,
    # CLOSE ALL, UNLISTEN *, RESET ALL in one Query).
    pool = await asyncpg.create_pool(min_size=1, max_size=1, **apg_args(A))
    for i in range(3):
        async with pool.acquire() as conn:
            want_eq(await conn.fetchval("SHOW statement_timeout"), "0", f"checkout {i}: statement_timeout")
            await conn.execute("SET statement_timeout = '5s'")
            want(A, await conn.fetchrow(PROBE), f"checkout {i}")
    await pool.close()


@check("asyncpg")
def _():
    asyncio.run(apg_main())


# Django ----------------------------------------------------------------------


def django_setup():
    import django
    from django.conf import settings

    def db(c):
        d = {"ENGINE": "django.db.backends.postgresql", "NAME": cfg["database"], "USER": c["user"],
             "PASSWORD": c["password"], "HOST": cfg["host"], "PORT": str(cfg["port"])}
        if c.get("options"):
            d["OPTIONS"] = {"options": c["options"]}
        return d

    settings.configure(DATABASES={"default": db(A), "b": db(B)}, USE_TZ=True, TIME_ZONE="UTC",
                       INSTALLED_APPS=[], DEFAULT_AUTO_FIELD="django.db.models.AutoField")
    django.setup()
    from django.db import models

    class DjangoProject(models.Model):
        tenant_id = models.UUIDField()
        name = models.TextField()

        class Meta:
            app_label = "drivers"
            db_table = "projects"
            managed = False

    return DjangoProject


DjangoProject = None


def django_model():
    global DjangoProject
    if DjangoProject is None:
        DjangoProject = django_setup()
    return DjangoProject


@check("django")
def _():
    from django.db import connections
    model = django_model()
    for _ in range(2):
        for alias, c in (("default", A), ("b", B)):
            want_eq(",".join(p.name for p in model.objects.using(alias).order_by("id")), c["names"], f"{alias}: ORM")
            with connections[alias].cursor() as cur:
                # Django sets the time zone on connect when the server's differs.
                cur.execute("SHOW TimeZone")
                want_eq(cur.fetchone()[0], "UTC", f"{alias}: time zone")
                cur.execute(PROBE)
                want(c, cur.fetchone())


@check("django iterator")
def _():
    # .iterator() outside a transaction: a server-side cursor, WITH HOLD.
    model = django_model()
    for alias, c in (("default", A), ("b", B)):
        got = ",".join(p.name for p in model.objects.using(alias).order_by("id").iterator(chunk_size=1))
        want_eq(got, c["names"], f"{alias}: iterator")


print(json.dumps({"results": results}))
