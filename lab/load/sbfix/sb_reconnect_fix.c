/*
 * LD_PRELOAD shim for sysbench 1.0.20 linked against MariaDB Connector/C (libmariadb3).
 *
 * sysbench's mysql_drv_reconnect() calls mysql_close(con) and then mysql_real_connect(con)
 * on the same MYSQL handle. Connector/C's mysql_close() leaves that handle unusable, so the
 * reconnect after error 2013 segfaults in mysql_optionsv() (akopytov/sysbench#527, the idea
 * of the unmerged PR #528). This shim re-initialises the handle after every mysql_close():
 * safe because sysbench malloc()s the MYSQL struct itself (mysql_init(con) with its own
 * buffer, so Connector/C never frees it). Built at run time by lab.load.sysbench; never
 * committed as a binary.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct st_mysql MYSQL;

void mysql_close(MYSQL *mysql)
{
    static void (*real_close)(MYSQL *);
    static MYSQL *(*real_init)(MYSQL *);

    if (real_close == NULL) {
        real_close = (void (*)(MYSQL *))dlsym(RTLD_NEXT, "mysql_close");
        real_init = (MYSQL *(*)(MYSQL *))dlsym(RTLD_NEXT, "mysql_init");
    }
    real_close(mysql);
    if (mysql != NULL)
        real_init(mysql);
}
