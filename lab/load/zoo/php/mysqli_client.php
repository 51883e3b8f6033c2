<?php
// The zoo's php-mysqli client: mysqli (over mysqlnd) as an application uses it: one
// connection, kept, reconnected on error (lab/load/zoo/README.md is the contract).
//
// mysqli's own options, in whole seconds: MYSQLI_OPT_CONNECT_TIMEOUT (default: PHP's
// default_socket_timeout, 60) and MYSQLI_OPT_READ_TIMEOUT (default: mysqlnd.net_read_timeout,
// 86400). mysqlnd turns SO_KEEPALIVE on by itself and gives no access to its socket, so no
// other socket option can be set; it has no write timeout either.

declare(strict_types=1);

const REFUSED = 64;
const CANNOT = [
    'LAB_WRITE_TIMEOUT_MS' => 'mysqli has no write timeout option',
    'LAB_TCP_USER_TIMEOUT_MS' => 'mysqli gives no access to its socket',
    'LAB_TCP_KEEPIDLE' => 'mysqli gives no access to its socket',
    'LAB_TCP_KEEPINTVL' => 'mysqli gives no access to its socket',
    'LAB_TCP_KEEPCNT' => 'mysqli gives no access to its socket',
];

ini_set('display_errors', 'stderr');  // stdout holds the contract's lines only
error_reporting(E_ALL);
mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);  // errors are exceptions

function emit(string $text): void
{
    fwrite(STDOUT, sprintf("%d %s\n", (int) floor(microtime(true) * 1000), $text));
    fflush(STDOUT);
}

function one_line(Throwable $e): string
{
    $text = sprintf('%s (%d): %s', get_class($e), $e->getCode(), $e->getMessage());
    return implode(' ', preg_split('/\s+/', trim($text)));
}

function refuse(string $why): never
{
    fwrite(STDERR, $why . "\n");
    exit(REFUSED);
}

// a LAB_*_MS value in the whole seconds mysqli takes (a fraction is refused, not rounded)
function whole_seconds(string $name): ?int
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        return null;
    }
    $ms = (int) $value;
    if ($ms <= 0 || $ms % 1000 !== 0) {
        refuse("$name=$value: mysqli takes whole seconds (> 0)");
    }
    return intdiv($ms, 1000);
}

// mysqli's options for the LAB_* keys that are set (absent: the library's default)
function settings(): array
{
    foreach (CANNOT as $name => $why) {
        if (getenv($name) !== false && getenv($name) !== '') {
            refuse("$name=" . getenv($name) . ": $why");
        }
    }
    if (getenv('LAB_SO_KEEPALIVE') === '0') {
        refuse('LAB_SO_KEEPALIVE=0: mysqlnd always turns SO_KEEPALIVE on');
    }
    $options = [];
    $connect = whole_seconds('LAB_CONNECT_TIMEOUT_MS');
    if ($connect !== null) {
        $options[MYSQLI_OPT_CONNECT_TIMEOUT] = $connect;
    }
    $read = whole_seconds('LAB_READ_TIMEOUT_MS');
    if ($read !== null) {
        $options[MYSQLI_OPT_READ_TIMEOUT] = $read;
    }
    return $options;
}

function connect_db(array $options): mysqli
{
    $db = mysqli_init();
    foreach ($options as $option => $value) {
        $db->options($option, $value);
    }
    $db->real_connect(getenv('LAB_HOST'), getenv('LAB_USER'), getenv('LAB_PASSWORD'),
        getenv('LAB_DATABASE'), (int) getenv('LAB_PORT'));
    return $db;
}

function transaction(mysqli $db, int $tables, int $size): void
{
    $table = 'sbtest' . random_int(1, $tables);
    $id = random_int(1, $size);
    $db->query('BEGIN');
    $db->query("SELECT c FROM $table WHERE id=$id")->free();
    $db->query("UPDATE $table SET k=k+1 WHERE id=$id");
    $db->query('COMMIT');
}

function close_db(mysqli $db): void
{
    try {
        $db->close();
    } catch (Throwable $e) {  // a broken connection may refuse even its close
        fwrite(STDERR, 'close: ' . one_line($e) . "\n");
    }
}

function session(array $options, int $tables, int $size, int $pause_us): void
{
    try {
        $db = connect_db($options);
    } catch (Throwable $e) {
        emit('ERR ' . one_line($e));
        return;
    }
    emit('CONNECTED');
    try {
        for (;;) {
            transaction($db, $tables, $size);
            emit('OK');
            usleep($pause_us);
        }
    } catch (Throwable $e) {
        emit('ERR ' . one_line($e));
        close_db($db);
    }
}

// PHP runs a signal handler only between VM instructions, and mysqlnd's socket waits retry
// on EINTR: a SIGTERM during a blackholed connect or read would wait for the library's own
// timeout (60 s, 86400 s). So a parent that only waits for signals ends the worker instead.
function supervise(callable $work): never
{
    pcntl_sigprocmask(SIG_BLOCK, [SIGTERM, SIGCHLD]);
    $child = pcntl_fork();
    if ($child === -1) {
        fwrite(STDERR, "cannot fork the worker\n");
        exit(1);
    }
    if ($child === 0) {
        pcntl_sigprocmask(SIG_UNBLOCK, [SIGTERM, SIGCHLD]);
        $work();
        exit(1);
    }
    for (;;) {
        $signal = pcntl_sigwaitinfo([SIGTERM, SIGCHLD]);
        if ($signal === SIGTERM) {
            posix_kill($child, SIGKILL);
            pcntl_waitpid($child, $status);
            exit(0);
        }
        if ($signal === SIGCHLD && pcntl_waitpid($child, $status, WNOHANG) === $child) {
            // the group's SIGTERM reached the worker first; else the worker died of a bug
            // (the loop never returns; its error is on stderr)
            $terminated = pcntl_wifsignaled($status) && pcntl_wtermsig($status) === SIGTERM;
            exit($terminated ? 0 : 1);
        }
    }
}

function main(): void
{
    $options = settings();
    $tables = (int) getenv('LAB_TABLES');
    $size = (int) getenv('LAB_TABLE_SIZE');
    $pause_us = (int) (getenv('LAB_PAUSE_MS') ?: 10) * 1000;
    $reconnect_us = (int) (getenv('LAB_RECONNECT_PAUSE_MS') ?: 5) * 1000;
    supervise(function () use ($options, $tables, $size, $pause_us, $reconnect_us): void {
        emit('VERSION mysqlnd ' . preg_replace('/^mysqlnd\s+/', '', mysqli_get_client_info()));
        for (;;) {
            session($options, $tables, $size, $pause_us);
            usleep($reconnect_us);
        }
    });
}

main();
