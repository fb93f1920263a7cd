// postgres.js (porsager/postgres) with its default settings: named prepared
// statements, queries pipelined on one connection, a transaction with
// sql.begin. Two clients of different tenants take turns on pgtenant.
// Run by e2e/pool_drivers_test.go (TestPoolDriverNode) as
//   node postgresjs.mjs '{"host":..., "port":..., "database":..., "a": {"user":..., "password":..., "tenant":..., "names": ...}, "b": {...}}'
// It prints {"results": [{label, ok, detail}, ...]} on stdout.
import postgres from 'postgres';

const cfg = JSON.parse(process.argv[2]);
const connect = (who) => postgres({
  host: cfg.host,
  port: Number(cfg.port),
  database: cfg.database,
  username: cfg[who].user,
  password: cfg[who].password,
  ssl: false,
  max: 1,
  connection: cfg[who].options ? { options: cfg[who].options } : {}, // straight against PostgreSQL: the tenant setting
  onnotice: () => {},
});
const results = [];
const check = async (label, f) => {
  try {
    await f();
    results.push({ label, ok: true });
  } catch (e) {
    results.push({ label, ok: false, detail: String(e && e.stack || e), code: e && e.code });
  }
};
const want = (who, row, what) => {
  const c = cfg[who];
  if (row.tenant !== c.tenant || row.names !== c.names) {
    throw new Error(`${what}: ran as ${row.tenant} seeing ${row.names}, want ${c.tenant} seeing ${c.names}`);
  }
};

const a = connect('a');
const b = connect('b');
const probe = (sql, min) => sql`SELECT current_setting('app.tenant_id') AS tenant, coalesce(string_agg(name, ',' ORDER BY id), '') AS names FROM projects WHERE length(name) > ${min}`;

await check('prepared statements, taking turns', async () => {
  for (let i = 0; i < 6; i++) {
    want('a', (await probe(a, 0))[0], `A ${i}`);
    want('b', (await probe(b, 0))[0], `B ${i}`);
  }
});
await check('pipelined queries', async () => {
  const [ra, rb] = await Promise.all([
    Promise.all([probe(a, 0), probe(a, 1), probe(a, 2)]),
    Promise.all([probe(b, 0), probe(b, 1), probe(b, 2)]),
  ]);
  ra.forEach((r, i) => want('a', r[0], `A pipelined ${i}`));
  rb.forEach((r, i) => want('b', r[0], `B pipelined ${i}`));
});
await check('transactions', async () => {
  const got = await a.begin(async (sql) => {
    await sql`SET LOCAL statement_timeout = '5s'`;
    return (await probe(sql, 0))[0];
  });
  want('a', got, 'A in sql.begin');
  want('b', (await probe(b, 0))[0], 'B after');
});
await check('errors', async () => {
  try {
    await a`SELECT 1/${0}::int`;
    throw new Error('1/0 did not fail');
  } catch (e) {
    if (e.code !== '22012') throw e;
  }
  want('a', (await probe(a, 0))[0], 'A after the error');
});
await a.end();
await b.end();
console.log(JSON.stringify({ results }));
