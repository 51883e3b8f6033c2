'use strict';
// The zoo's node-mysql2 client: mysql2 (promise API) as an application uses it: one
// connection, kept, reconnected on error (lab/load/zoo/README.md is the contract).
//
// argv[2] is the node_modules folder that holds mysql2 (the lab installs it there, nothing
// is fetched at run time). mysql2's own options: connectTimeout (ms, default 10000), a
// query's timeout (ms, default none), enableKeepAlive (default true) and
// keepAliveInitialDelay (ms, default 0: the kernel's tcp_keepalive_time). Node's net.Socket
// cannot set TCP_USER_TIMEOUT, TCP_KEEPINTVL or TCP_KEEPCNT, and mysql2 has no write timeout.

const path = require('path');

const REFUSED = 64;
const modules = process.argv[2];
const mysql = require(path.join(modules, 'mysql2', 'promise'));
const mysqlVersion = require(path.join(modules, 'mysql2', 'package.json')).version;

const CANNOT = {
  LAB_WRITE_TIMEOUT_MS: 'mysql2 has no write timeout',
  LAB_TCP_USER_TIMEOUT_MS: "Node's net.Socket cannot set TCP_USER_TIMEOUT",
  LAB_TCP_KEEPINTVL: "Node's net.Socket cannot set TCP_KEEPINTVL",
  LAB_TCP_KEEPCNT: "Node's net.Socket cannot set TCP_KEEPCNT",
};

function emit(text) {
  process.stdout.write(`${Date.now()} ${text}\n`);
}

function oneLine(err) {
  const text = err && err.code ? `${err.code}: ${err.message}` : String(err);
  return text.split(/\s+/).join(' ');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// mysql2's options for the LAB_* keys that are set (absent: the library's default)
function settings(env) {
  for (const [name, why] of Object.entries(CANNOT)) {
    if (env[name]) {
      process.stderr.write(`${name}=${env[name]}: ${why}\n`);
      process.exit(REFUSED);
    }
  }
  const options = {
    host: env.LAB_HOST, port: Number(env.LAB_PORT), user: env.LAB_USER,
    password: env.LAB_PASSWORD, database: env.LAB_DATABASE,
  };
  if (env.LAB_CONNECT_TIMEOUT_MS) options.connectTimeout = Number(env.LAB_CONNECT_TIMEOUT_MS);
  if (env.LAB_SO_KEEPALIVE) options.enableKeepAlive = env.LAB_SO_KEEPALIVE === '1';
  if (env.LAB_TCP_KEEPIDLE) options.keepAliveInitialDelay = Number(env.LAB_TCP_KEEPIDLE) * 1000;
  return {
    options,
    timeout: env.LAB_READ_TIMEOUT_MS ? Number(env.LAB_READ_TIMEOUT_MS) : undefined,
    tables: Number(env.LAB_TABLES), tableSize: Number(env.LAB_TABLE_SIZE),
    pause: Number(env.LAB_PAUSE_MS || 10), reconnectPause: Number(env.LAB_RECONNECT_PAUSE_MS || 5),
  };
}

function pick(n) {
  return 1 + Math.floor(Math.random() * n);
}

async function transaction(conn, cfg) {
  const table = `sbtest${pick(cfg.tables)}`;
  const id = pick(cfg.tableSize);
  const query = (sql, values) => conn.query({ sql, values, timeout: cfg.timeout });
  await query('BEGIN');
  await query(`SELECT c FROM ${table} WHERE id=?`, [id]);
  await query(`UPDATE ${table} SET k=k+1 WHERE id=?`, [id]);
  await query('COMMIT');
}

async function session(cfg) {
  let conn;
  try {
    conn = await mysql.createConnection(cfg.options);
  } catch (err) {
    emit(`ERR ${oneLine(err)}`);
    return;
  }
  // an error with no query pending (the socket's own) is reported by the next query
  conn.on('error', (err) => process.stderr.write(`connection error: ${oneLine(err)}\n`));
  emit('CONNECTED');
  try {
    for (;;) {
      await transaction(conn, cfg);
      emit('OK');
      await sleep(cfg.pause);
    }
  } catch (err) {
    emit(`ERR ${oneLine(err)}`);
    conn.destroy();
  }
}

async function main() {
  const cfg = settings(process.env);
  process.on('SIGTERM', () => process.exit(0));
  emit(`VERSION mysql2 ${mysqlVersion}`);
  for (;;) {
    await session(cfg);
    await sleep(cfg.reconnectPause);
  }
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
