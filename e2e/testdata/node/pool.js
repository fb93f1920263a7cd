'use strict';
// Two node-postgres clients of different tenants take turns on pgtenant's
// transaction pool with named prepared statements. Run by
// e2e/pool_drivers_test.go (TestPoolDriverNode) as
//   node pool.js '{"host":..., "port":..., "database":..., "a": {"user":..., "password":..., "tenant":...}, "b": {...}}'
// It prints {"results": [{label, rows} or {label, error, message}, ...]} on stdout.

const { Client } = require('pg');

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const connect = async (who) => {
    const client = new Client({
      host: cfg.host,
      port: Number(cfg.port),
      database: cfg.database,
      user: cfg[who].user,
      password: cfg[who].password,
      options: cfg[who].options, // straight against PostgreSQL: the tenant setting
      ssl: false,
    });
    await client.connect();
    return client;
  };
  const a = await connect('a');
  const b = await connect('b');
  const results = [];
  const run = async (label, client, query) => {
    try {
      const res = await client.query(query);
      results.push({ label, rows: res.rows });
    } catch (err) {
      results.push({ label, error: err.code || 'no SQLSTATE', message: String(err.message) });
    }
  };

  // One name, one text, for both clients: pg sends Parse the first time on
  // each client, Bind alone afterwards.
  const getProjects = (exclude) => ({
    name: 'get-projects',
    text: "SELECT current_setting('app.tenant_id') AS tenant, name FROM projects WHERE name <> $1 ORDER BY id",
    values: [exclude],
  });
  const countFor = (tenant) => ({
    name: 'count-for',
    text: "SELECT current_setting('app.tenant_id') AS tenant, count(*)::int AS n FROM projects WHERE tenant_id = $1",
    values: [tenant],
  });
  // One name, a different text per client.
  const sameName = (which) => ({
    name: 'same-name',
    text: `SELECT '${which}' AS which, current_setting('app.tenant_id') AS tenant`,
  });

  await run('a get-projects 1', a, getProjects('-'));
  await run('b get-projects 1', b, getProjects('-'));
  await run('a get-projects 2', a, getProjects('anvil'));
  await run('b get-projects 2', b, getProjects('monorail'));
  await run('a count own', a, countFor(cfg.a.tenant));
  await run('b count own', b, countFor(cfg.b.tenant));
  await run('a count other', a, countFor(cfg.b.tenant));
  await run('b count other', b, countFor(cfg.a.tenant));
  await run('a get-projects 3', a, getProjects('-'));
  for (const round of [1, 2]) {
    await run(`a same-name ${round}`, a, sameName('a-text'));
    await run(`b same-name ${round}`, b, sameName('b-text'));
  }

  // A transaction of a's holds the pool's only connection: b's statement
  // waits until a commits.
  await a.query('BEGIN');
  const during = run("b get-projects during a's tx", b, getProjects('-'));
  await run('a get-projects in tx', a, getProjects('-'));
  await new Promise((resolve) => setTimeout(resolve, 200));
  await a.query('COMMIT');
  await during;
  await run('a get-projects after tx', a, getProjects('-'));

  await a.end();
  await b.end();
  process.stdout.write(JSON.stringify({ results }) + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
