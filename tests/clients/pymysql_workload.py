"""A PyMySQL workload whose every observation is printed as JSON, so a run through Sluice can be
compared with a run straight against the server.

Usage: pymysql_workload.py HOST PORT USER PASSWORD SCHEMA INFILE
"""

import decimal
import json
import sys

import pymysql


def main():
    host, port, user, password, schema, infile = sys.argv[1:7]
    out = {}
    conn = pymysql.connect(host=host, port=int(port), user=user, password=password,
                           database=schema, local_infile=True, charset="utf8mb4",
                           client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    cur = conn.cursor()

    # DDL and DML; PyMySQL runs with autocommit off, so this is one transaction.
    cur.execute("CREATE TABLE p (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(40), "
                "price DECIMAL(12,3), data BLOB, note TEXT NULL)")
    out["insert"] = cur.executemany(
        "INSERT INTO p (name, price, data, note) VALUES (%s, %s, %s, %s)",
        [("a", decimal.Decimal("1.250"), b"\x00\x01\xff", None),
         ("b ✓", decimal.Decimal("-99999.999"), b"", "n"),
         ("c", None, None, None)])
    out["lastrowid"] = cur.lastrowid
    conn.commit()
    cur.execute("SELECT id, name, price, data, note FROM p ORDER BY id")
    out["rows"] = [[r[0], r[1], str(r[2]) if r[2] is not None else None,
                    r[3].hex() if r[3] is not None else None, r[4]] for r in cur.fetchall()]
    out["types"] = [type(v).__name__ for v in cur.execute("SELECT price, data FROM p WHERE id = 1")
                    and cur.fetchone()]
    out["description"] = [list(d) for d in cur.description]

    # Rollback really rolls back.
    cur.execute("UPDATE p SET name = 'changed'")
    conn.rollback()
    cur.execute("SELECT COUNT(*) FROM p WHERE name = 'changed'")
    out["after_rollback"] = cur.fetchone()[0]

    # Several result sets from one query.
    cur.execute("SELECT 1 AS one; SELECT 'two' AS two, 2.5 AS half; UPDATE p SET note = 'x' WHERE id = 3")
    sets = [cur.fetchall()]
    while cur.nextset():
        sets.append(cur.fetchall())
    out["multi"] = [[[str(v) for v in row] for row in rows] for rows in sets]
    conn.commit()

    # Errors keep their codes and the session goes on.
    errors = []
    for q in ["SELECT * FROM missing", "INSERT INTO p (id) VALUES (1)", "SELEC 1"]:
        try:
            cur.execute(q)
        except pymysql.MySQLError as e:
            errors.append([e.args[0], e.args[1]])
            conn.rollback()
    out["errors"] = errors

    # LOAD DATA LOCAL INFILE, then a file the client declines (it answers with no data).
    cur.execute("CREATE TABLE f (id INT PRIMARY KEY, name VARCHAR(40))")
    out["load"] = cur.execute(
        f"LOAD DATA LOCAL INFILE '{infile}' INTO TABLE f FIELDS TERMINATED BY ','")
    conn.commit()
    try:
        cur.execute("LOAD DATA LOCAL INFILE '/nonexistent/file.csv' INTO TABLE f")
        out["declined"] = "no error"
    except pymysql.MySQLError as e:
        out["declined"] = [type(e).__name__, e.args[0]]
    conn.rollback()
    cur.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM f")
    out["loaded"] = list(cur.fetchone())

    # Ping and a second connection after the first is done.
    conn.ping(reconnect=False)
    conn.close()
    conn = pymysql.connect(host=host, port=int(port), user=user, password=password,
                           database=schema, autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT COUNT(*) FROM p")
    out["second_connection"] = cur.fetchone()[0]
    conn.close()
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
