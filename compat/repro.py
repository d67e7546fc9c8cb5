"""Minimal reproductions of the causes in known-differences.toml, one small case per cause.

Run by compat/repro.sh inside sluice-compat-env, once directly and once through Sluice; each
case prints one line of what it observed, and repro.sh shows the two side by side. Each case
is the shortest client-visible sequence that shows the difference (see known-differences.toml
for what it means to a user).

usage: repro.py [CASE...]   (no CASE: all)
"""

import os
import socket
import struct
import subprocess
import sys
import time

import mariadb
import mysql.connector
import pymysql
from mariadb.constants import INDICATOR

HOST = os.environ["COMPAT_HOST"]
PORT = int(os.environ["COMPAT_PORT"])
USER = os.environ["COMPAT_USER"]
PASSWORD = os.environ["COMPAT_PASSWORD"]
CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def mdb(**extra):
    """MariaDB Connector/Python (Connector/C underneath), the driver most causes show in."""
    return mariadb.connect(host=HOST, port=PORT, user=USER, password=PASSWORD,
                           database="mysql", read_timeout=15, **extra)


def pym(**extra):
    return pymysql.connect(host=HOST, port=PORT, user=USER, password=PASSWORD,
                           database="mysql", read_timeout=15, **extra)


def error(e):
    code = getattr(e, "errno", None) or (e.args[0] if e.args else "")
    return f"error {code}: {str(e)[:80]}"


@case("extended-metadata")
def extended_metadata():
    # MariaDB sends a column's extended type (json, uuid, inet4) only to clients that
    # negotiated MARIADB_CLIENT_EXTENDED_METADATA.
    conn = mdb()
    cur = conn.cursor()
    cur.execute("CREATE TEMPORARY TABLE t (a JSON, b UUID, c INET4)")
    cur.execute("SELECT a, b, c FROM t")
    return f"ext_type_or_format = {cur.metadata['ext_type_or_format']}"


@case("bulk-operations")
def bulk_execution():
    # executemany() uses COM_STMT_BULK_EXECUTE when MARIADB_CLIENT_STMT_BULK_OPERATIONS was
    # negotiated; indicator variables exist only there.
    conn = mdb()
    cur = conn.cursor()
    cur.execute("CREATE TEMPORARY TABLE t (a INT, b INT DEFAULT 7)")
    cur.executemany("INSERT INTO t VALUES (?, ?)", [(1, 2), (2, 3), (3, 4)])
    rowcount = cur.rowcount
    try:
        cur.executemany("INSERT INTO t VALUES (?, ?)", [(4, INDICATOR.DEFAULT)])
        indicator = "accepted"
    except mariadb.Error as e:
        indicator = error(e)
    return f"executemany of 3 rows: rowcount {rowcount}; indicator_default: {indicator}"


@case("session-tracking")
def session_tracking():
    # Drivers learn the current schema (and character set) from session-state-change data,
    # which the server sends only to clients with CLIENT_SESSION_TRACK.
    conn = mdb()
    cur = conn.cursor()
    cur.execute("USE information_schema")
    return f"after USE information_schema, connection.database = {conn.database!r}"


@case("compression")
def compression():
    # The client asks for the compressed protocol (CLIENT_COMPRESS).
    conn = mdb(compress=True)
    cur = conn.cursor()
    cur.execute("SHOW SESSION STATUS LIKE 'Compression'")
    return f"compress=True, Compression = {cur.fetchone()[1]}"


def outcome(conn, sql):
    """What a PyMySQL connection gets for sql: the first value, OK, or the error."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            row = cur.fetchone()
        return "OK" if row is None else str(row[0])
    except pymysql.Error as e:
        return error(e)


@case("session-wait-timeout")
def session_wait_timeout():
    conn = pym()
    outcome(conn, "SET SESSION wait_timeout = 1")
    time.sleep(3)
    return f"SET SESSION wait_timeout = 1, 3 s idle, SELECT 1 -> {outcome(conn, 'SELECT 1')}"


@case("new-session-globals")
def new_session_state():
    # A new session's variables start from the server's global values at connect time.
    admin = pym()
    with admin.cursor() as cur:
        cur.execute("SELECT @@global.wait_timeout")
        old = cur.fetchone()[0]
        cur.execute("SET GLOBAL wait_timeout = 1234")
    try:
        fresh = pym()
        with fresh.cursor() as cur:
            cur.execute("SELECT @@session.wait_timeout")
            seen = cur.fetchone()[0]
    finally:
        with admin.cursor() as cur:
            cur.execute(f"SET GLOBAL wait_timeout = {old}")
    return f"after SET GLOBAL wait_timeout = 1234, a new session sees {seen}"


@case("status-variables")
def session_status():
    # Per-session status counters (SHOW SESSION STATUS) count the server connection's work.
    cnx = mysql.connector.connect(host=HOST, port=PORT, user=USER, password=PASSWORD,
                                  use_pure=True)
    cur = cnx.cursor(prepared=True)
    cur.execute("SELECT ?", (1,))
    cur.fetchall()
    cur.close()
    cur = cnx.cursor()
    cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_stmt_prepare', "
                "'Com_stmt_close')")
    return "after one prepare/execute/close: " + ", ".join(f"{k} {v}" for k, v in cur.fetchall())


@case("connection-id")
def connection_id():
    # The id in the handshake (what drivers report, and what KILL takes) and CONNECTION_ID().
    conn = pym()
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return f"handshake id {conn.thread_id()}, SELECT CONNECTION_ID() = {cur.fetchone()[0]}"


@case("kill")
def kill():
    conn = pym()
    # The handshake's id, as drivers' kill() use it.
    first = outcome(conn, f"KILL {conn.thread_id()}")
    return f"KILL <own id> -> {first}; then SELECT 1 -> {outcome(conn, 'SELECT 1')}"


@case("kill-idle-victim")
def kill_idle_victim():
    victim = pym()
    first = outcome(pym(), f"KILL {victim.thread_id()}")
    time.sleep(0.5)
    return f"KILL <idle victim> -> {first}; then the victim's SELECT 1 -> " \
        f"{outcome(victim, 'SELECT 1')}"


@case("unknown-users")
def unknown_user():
    admin = pym()
    with admin.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'repro'@'%' IDENTIFIED BY 'repro-pw'")
    try:
        pymysql.connect(host=HOST, port=PORT, user="repro", password="repro-pw").close()
        return "a user created with CREATE USER logs in"
    except pymysql.Error as e:
        return f"a user created with CREATE USER: {error(e)}"


def mcp(**extra):
    return mysql.connector.connect(host=HOST, port=PORT, user=USER, password=PASSWORD,
                                   use_pure=True, read_timeout=15, **extra)


@case("statement-ids")
def statement_ids():
    # As Connector/Python's MySQLCursorPreparedTests.test_execute does it.
    cnx = mcp()
    cur, cur2 = cnx.cursor(prepared=True), cnx.cursor(prepared=True)
    cur.execute("SELECT (? * 2) AS c1", (5,))
    first = cur._prepared["statement_id"]
    try:
        cur2.execute("SELECT (? * 3) AS c2")  # refused: cur's result is unread
    except mysql.connector.Error:
        pass
    cur.fetchall()
    try:
        cur2.execute("SELECT (? * 3) AS c2", (1, 3))  # refused: too many parameters
    except mysql.connector.Error:
        pass
    cur2.execute("SELECT (? * 3) AS c2", (5,))
    cur2.fetchall()
    return f"statement ids {first}, then {cur2._prepared['statement_id']}"


@case("prepared-param-types")
def prepared_param_types():
    # Two prepared cursors with the same text, one after the other, as Connector/Python's
    # CursorDataIntegrity.test_select_query_with_params does.
    cnx = mcp()
    seen = []
    for params in [(1,), ("abc",)]:
        cur = cnx.cursor(prepared=True)
        cur.execute("SELECT %s", params)
        seen.append(cur.fetchone()[0])
        cur.close()
    return f"prepare+execute 'SELECT ?' with 1, close, again with 'abc': {seen}"


@case("query-attributes")
def query_attributes():
    # MySQL 8.0.23+ (the function does not exist on MariaDB).
    cnx = mcp()
    cur = cnx.cursor()
    try:
        cur.execute("INSTALL COMPONENT 'file://component_query_attributes'")
    except mysql.connector.Error:
        pass  # installed already
    cur.add_attribute("attr1", "foo")
    cur.execute("SELECT mysql_query_attribute_string('attr1')")
    return f"query attribute attr1 = 'foo' seen by the server as {cur.fetchone()[0]!r}"


@case("connect-attributes")
def connect_attributes():
    # performance_schema is on by default in MySQL, off in the MariaDB sandbox.
    cnx = mcp(conn_attrs={"foo": "bar"})
    cur = cnx.cursor()
    cur.execute("SELECT ATTR_VALUE FROM performance_schema.session_connect_attrs "
                "WHERE PROCESSLIST_ID = CONNECTION_ID() AND ATTR_NAME = 'foo'")
    return f"connection attribute foo = 'bar' seen by the server as {cur.fetchall()}"


@case("call-out-params")
def call_out_params():
    # MariaDB Connector/Python's test_conpy178: CALL with an OUT parameter, binary protocol.
    conn = mdb()
    cur = conn.cursor()
    cur.execute("DROP PROCEDURE IF EXISTS p2")
    cur.execute("CREATE PROCEDURE p2(IN s1 VARCHAR(20), IN s2 VARCHAR(20), OUT o1 VARCHAR(40))"
                " BEGIN SET o1 := CONCAT(s1, s2); END")
    for i in range(3):
        try:
            cur.callproc("p2", ("foo", "bar", 1))
            row = cur.fetchone()
        except mariadb.Error as e:
            return f"callproc #{i + 1}: {error(e)}"
    return f"3 x callproc('p2', ('foo', 'bar', 1)): OUT parameter {row[0]!r}"


@case("replication")
def replication():
    # COM_BINLOG_DUMP, as mariadb-binlog --read-from-remote-server sends it.
    out = subprocess.run(
        ["mariadb-binlog", "--no-defaults", "--read-from-remote-server", f"--host={HOST}",
         f"--port={PORT}", f"--user={USER}", f"--password={PASSWORD}",
         "mysql-bin.000001"],
        capture_output=True, text=True, timeout=30,
    )
    if out.returncode == 0:
        return f"mariadb-binlog -R read {len(out.stdout.splitlines())} lines"
    return f"mariadb-binlog -R failed: {out.stderr.strip().splitlines()[-1][:100]}"


def main():
    names = sys.argv[1:] or list(CASES)
    for name in names:
        try:
            result = CASES[name]()
        except Exception as e:  # a case that breaks shows how, not a traceback
            result = f"{type(e).__name__}: {error(e)}"
        print(f"{name}\t{result}", flush=True)


if __name__ == "__main__":
    main()
