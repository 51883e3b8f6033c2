/*
 * The c-libmariadb stack of the client zoo (contract: lab/load/zoo/README.md).
 *
 * An application's long-lived session in C: one MYSQL handle, mysql_real_connect once, a
 * loop of transactions on it; on any error mysql_close() and a fresh mysql_init() +
 * mysql_real_connect() (MYSQL_OPT_RECONNECT stays off, its default: the application
 * reconnects itself, as it must to know its transaction was lost).
 *
 * The timeouts are libmariadb's own options (whole seconds); libmariadb has no option for
 * the TCP socket options, so they are set with setsockopt on mysql_get_socket() right after
 * connect. Built by lab.load.zoo.native with gcc and `mariadb_config --cflags --libs`.
 */
#include <errno.h>
#include <mysql.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define REFUSED 64

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
    struct timeval now;
    va_list args;

    gettimeofday(&now, NULL);
    printf("%lld ", (long long)now.tv_sec * 1000 + now.tv_usec / 1000);
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

static void refuse(const char *why, const char *name)
{
    fprintf(stderr, "c-libmariadb: %s: %s=%s\n", why, name, getenv(name));
    exit(REFUSED);
}

/* 1 and *value when the variable is set; 0 when unset (the library keeps its default) */
static int env_int(const char *name, long *value)
{
    const char *text = getenv(name);
    char *end;

    if (text == NULL || *text == '\0')
        return 0;
    errno = 0;
    *value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || *value < 0)
        refuse("not a non-negative integer", name);
    return 1;
}

/* a LAB_*_MS timeout as libmariadb's whole seconds (it cannot take a fraction) */
static void set_timeout(MYSQL *mysql, enum mysql_option option, const char *name)
{
    long ms;
    unsigned int seconds;

    if (!env_int(name, &ms))
        return;
    if (ms % 1000 != 0 || ms == 0)
        refuse("libmariadb's timeouts are whole seconds (0 would mean none)", name);
    seconds = (unsigned int)(ms / 1000);
    mysql_optionsv(mysql, option, &seconds);
}

static int set_sockopt(int fd, int level, int option, const char *name)
{
    long value;
    int v;

    if (!env_int(name, &value))
        return 0;
    v = (int)value;
    if (setsockopt(fd, level, option, &v, sizeof v) != 0) {
        fprintf(stderr, "c-libmariadb: setsockopt %s=%ld: %s\n", name, value, strerror(errno));
        return -1;
    }
    return 0;
}

/* the socket keys, on the connected socket: libmariadb has no option for them */
static int set_socket_options(MYSQL *mysql)
{
    int fd = (int)mysql_get_socket(mysql);

    return set_sockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, "LAB_TCP_USER_TIMEOUT_MS")
        | set_sockopt(fd, SOL_SOCKET, SO_KEEPALIVE, "LAB_SO_KEEPALIVE")
        | set_sockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, "LAB_TCP_KEEPIDLE")
        | set_sockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, "LAB_TCP_KEEPINTVL")
        | set_sockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, "LAB_TCP_KEEPCNT");
}

/* refuse a malformed socket key at start, not at the first successful connect */
static void check_socket_keys(void)
{
    static const char *const keys[] = {"LAB_TCP_USER_TIMEOUT_MS", "LAB_SO_KEEPALIVE",
                                       "LAB_TCP_KEEPIDLE", "LAB_TCP_KEEPINTVL",
                                       "LAB_TCP_KEEPCNT"};
    long ignored;
    size_t i;

    for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
        env_int(keys[i], &ignored);
}

static void failed(MYSQL *mysql)
{
    say("ERR %u (%s): %s", mysql_errno(mysql), mysql_sqlstate(mysql), mysql_error(mysql));
}

/* a fresh handle with the lab's timeouts (also checked once at start, before any connect) */
static MYSQL *new_handle(void)
{
    MYSQL *mysql = mysql_init(NULL);

    if (mysql == NULL) {
        fprintf(stderr, "c-libmariadb: mysql_init: out of memory\n");
        exit(1);
    }
    set_timeout(mysql, MYSQL_OPT_CONNECT_TIMEOUT, "LAB_CONNECT_TIMEOUT_MS");
    set_timeout(mysql, MYSQL_OPT_READ_TIMEOUT, "LAB_READ_TIMEOUT_MS");
    set_timeout(mysql, MYSQL_OPT_WRITE_TIMEOUT, "LAB_WRITE_TIMEOUT_MS");
    return mysql;
}

static MYSQL *connect_once(void)
{
    MYSQL *mysql = new_handle();
    long port = 3306;

    env_int("LAB_PORT", &port);
    if (mysql_real_connect(mysql, getenv("LAB_HOST"), getenv("LAB_USER"),
                           getenv("LAB_PASSWORD"), getenv("LAB_DATABASE"),
                           (unsigned int)port, NULL, 0) == NULL) {
        failed(mysql);
        mysql_close(mysql);
        return NULL;
    }
    if (set_socket_options(mysql) != 0) {
        mysql_close(mysql);
        exit(REFUSED);
    }
    say("CONNECTED");
    return mysql;
}

static int run(MYSQL *mysql, const char *sql)
{
    MYSQL_RES *result;

    if (mysql_query(mysql, sql) != 0)
        return -1;
    result = mysql_store_result(mysql);
    if (result != NULL)
        mysql_free_result(result);
    return mysql_errno(mysql) != 0 ? -1 : 0;
}

static int transaction(MYSQL *mysql, long tables, long size)
{
    char select[96], update[96];
    long table = random() % tables + 1, id = random() % size + 1;

    snprintf(select, sizeof select, "SELECT c FROM sbtest%ld WHERE id=%ld", table, id);
    snprintf(update, sizeof update, "UPDATE sbtest%ld SET k=k+1 WHERE id=%ld", table, id);
    return run(mysql, "BEGIN") || run(mysql, select) || run(mysql, update)
        || run(mysql, "COMMIT");
}

static void pause_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

static void on_term(int sig)
{
    (void)sig;
    _exit(0);
}

int main(void)
{
    long tables = 0, size = 0, pause = 10, again = 5;
    MYSQL *mysql;

    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    if (!env_int("LAB_TABLES", &tables) || !env_int("LAB_TABLE_SIZE", &size)
            || tables < 1 || size < 1)
        refuse("LAB_TABLES and LAB_TABLE_SIZE must be positive", "LAB_TABLES");
    env_int("LAB_PAUSE_MS", &pause);
    env_int("LAB_RECONNECT_PAUSE_MS", &again);
    srandom((unsigned int)(time(NULL) ^ getpid()));
    if (mysql_library_init(0, NULL, NULL) != 0)
        return 1;
    check_socket_keys(); /* refuse a bad setting before the first connect */
    mysql_close(new_handle());
    say("VERSION libmariadb %s", MARIADB_PACKAGE_VERSION);
    for (;; pause_ms(again)) {
        if ((mysql = connect_once()) == NULL)
            continue;
        while (transaction(mysql, tables, size) == 0) {
            say("OK");
            pause_ms(pause);
        }
        failed(mysql);
        mysql_close(mysql);
    }
}
