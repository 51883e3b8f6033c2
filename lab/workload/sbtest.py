"""The sbtest workload's data: sysbench 1.0.20's oltp schema, its value generators, its rows.

Both sides of the lab need it: a MariaDB backend loads the tables once into its template
(what `sysbench oltp_read_write prepare` does), and the oltp driver writes the same kind of
values in its transactions. It sits below both, so neither imports the other.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Protocol

# the schema and its user, as sysbench's defaults name them; the user's password is not
# sysbench's fixed default but random per run (lab.backends.mariadb.run_password), so that no
# local user can log in with a password everybody knows
DATABASE = "sbtest"
USER = "sbtest"

C_GROUPS = 10  # oltp_common.lua: c = 10 groups of 11 random digits joined by '-' (119 chars)
PAD_GROUPS = 5  # pad = 5 groups (59 chars)

# sysbench 1.0.20's default --rand-type=special with --rand-spec-iter=12, -pct=1, -res=75
SPECIAL_ITER = 12
SPECIAL_PCT = 1
SPECIAL_RES = 75

INSERT_BATCH = 1000  # rows per INSERT while loading (sysbench's prepare batches them too)

Row = tuple[int, str, str]  # (k, c, pad); id is the table's AUTO_INCREMENT


def create_table_sql(table_num: int) -> str:
    """sysbench's CREATE TABLE for sbtestN (auto_inc, InnoDB; the k index comes after the load)."""
    return (
        f"CREATE TABLE sbtest{table_num}(\n"
        "  id INTEGER NOT NULL AUTO_INCREMENT,\n"
        "  k INTEGER DEFAULT '0' NOT NULL,\n"
        "  c CHAR(120) DEFAULT '' NOT NULL,\n"
        "  pad CHAR(60) DEFAULT '' NOT NULL,\n"
        "  PRIMARY KEY (id)\n"
        ") /*! ENGINE = innodb */"
    )


def create_index_sql(table_num: int) -> str:
    """The secondary index on k, built after the rows are in (faster than maintaining it)."""
    return f"CREATE INDEX k_{table_num} ON sbtest{table_num}(k)"


def insert_sql(table_num: int) -> str:
    """The parametrised INSERT of one row (DB-API `%s` placeholders, as PyMySQL takes them)."""
    return f"INSERT INTO sbtest{table_num}(k, c, pad) VALUES (%s, %s, %s)"


class SysbenchRandom(random.Random):
    """The value generators of sysbench 1.0.20's oltp scripts (same distributions, not the same
    PRNG stream): ids and k come from the 'special' distribution, strings are digit groups."""

    def special(self, a: int, b: int) -> int:
        """sb_rand_special: 75% of the values fall uniformly into the middle 1% of [a, b],
        the rest follows a 12-iteration gaussian over the whole range."""
        t = b - a
        rnd = self.random()
        if rnd * t * 100.0 / (100 - SPECIAL_RES) < t:
            s = sum(self.random() for _ in range(SPECIAL_ITER))
            return a + int(s * t / SPECIAL_ITER)
        hot = t * SPECIAL_PCT / 100.0
        return a + int(rnd * (hot + 1) + t / 2 - t * SPECIAL_PCT / 200.0)

    def digit_groups(self, groups: int) -> str:
        return "-".join(f"{self.randrange(10**11):011d}" for _ in range(groups))

    def c_value(self) -> str:
        return self.digit_groups(C_GROUPS)

    def pad_value(self) -> str:
        return self.digit_groups(PAD_GROUPS)


def row_batches(rng: SysbenchRandom, table_size: int,
                batch: int = INSERT_BATCH) -> Iterator[list[Row]]:
    """The `table_size` rows of one table, `batch` at a time (k from 'special' over the size)."""
    for first in range(0, table_size, batch):
        yield [(rng.special(1, table_size), rng.c_value(), rng.pad_value())
               for _ in range(min(batch, table_size - first))]


class Cursor(Protocol):
    """The part of a DB-API cursor that loading needs (a PyMySQL cursor, for one)."""

    def execute(self, query: str, args: Any = None) -> Any: ...

    def executemany(self, query: str, args: Any) -> Any: ...


def load_tables(cur: Cursor, tables: int, table_size: int,
                rng: SysbenchRandom | None = None) -> None:
    """sbtest1..N with their rows and k indexes, into the cursor's current database."""
    rng = rng or SysbenchRandom()
    for n in range(1, tables + 1):
        cur.execute(create_table_sql(n))
        for rows in row_batches(rng, table_size):
            cur.executemany(insert_sql(n), rows)
        cur.execute(create_index_sql(n))
