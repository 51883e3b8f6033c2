"""The sbtest workload's data: sysbench's schema text, its value distributions, its rows.

Loading the rows into a real mariadbd (row counts, id and k ranges, string lengths, read back
from the client namespace) is tests/backends/test_mariadb.py's."""

from __future__ import annotations

import re

from lab.workload.sbtest import (
    INSERT_BATCH,
    SysbenchRandom,
    create_index_sql,
    create_table_sql,
    insert_sql,
    row_batches,
)

C_FORMAT = re.compile(r"(\d{11}-){9}\d{11}")  # 10 groups of 11 digits: 119 chars
PAD_FORMAT = re.compile(r"(\d{11}-){4}\d{11}")  # 5 groups: 59 chars


def test_ddl_is_sysbench_oltp_common() -> None:
    assert create_table_sql(3) == (
        "CREATE TABLE sbtest3(\n"
        "  id INTEGER NOT NULL AUTO_INCREMENT,\n"
        "  k INTEGER DEFAULT '0' NOT NULL,\n"
        "  c CHAR(120) DEFAULT '' NOT NULL,\n"
        "  pad CHAR(60) DEFAULT '' NOT NULL,\n"
        "  PRIMARY KEY (id)\n"
        ") /*! ENGINE = innodb */"
    )
    assert create_index_sql(3) == "CREATE INDEX k_3 ON sbtest3(k)"
    assert insert_sql(3) == "INSERT INTO sbtest3(k, c, pad) VALUES (%s, %s, %s)"


def test_special_distribution_puts_three_quarters_in_the_middle_percent() -> None:
    rng = SysbenchRandom(1)
    values = [rng.special(1, 1000) for _ in range(20000)]
    assert min(values) >= 1 and max(values) <= 1000
    hot = sum(1 for v in values if 495 <= v <= 506)  # the middle 1%
    assert 0.70 < hot / len(values) < 0.80  # sysbench's 75% 'special' share


def test_rows_for_a_seed_are_the_same_rows() -> None:
    first = next(row_batches(SysbenchRandom(1), 1000, batch=2))
    assert first == [
        (534, "94498325926-36272661805-78291937585-16944808610-46821274425-00131383004-"
              "86008635065-02325348894-91831572943-68844205959",
         "75143941396-48245730361-91185877471-55926872437-15643535187"),
        (624, "68214727876-53709785029-64572796759-99826808035-54964432728-91973778293-"
              "47987701400-10199271823-92079639062-15068577045",
         "24818222051-48933658041-64551532934-38841482156-85827137723"),
    ]
    again = list(row_batches(SysbenchRandom(7), 50))
    assert again == list(row_batches(SysbenchRandom(7), 50))
    assert again != list(row_batches(SysbenchRandom(8), 50))


def test_rows_come_in_batches_of_the_table_size() -> None:
    size = 2 * INSERT_BATCH + 345
    batches = list(row_batches(SysbenchRandom(2), size))
    assert [len(b) for b in batches] == [INSERT_BATCH, INSERT_BATCH, 345]
    rows = [row for batch in batches for row in batch]
    assert all(1 <= k <= size for k, _, _ in rows)
    assert all(C_FORMAT.fullmatch(c) and PAD_FORMAT.fullmatch(pad) for _, c, pad in rows)
    assert list(row_batches(SysbenchRandom(2), 0)) == []
