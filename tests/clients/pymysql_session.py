"""A PyMySQL session configured at connect the way applications do it (charset, sql_mode,
autocommit, an init_command); prints what the session then sees, as JSON.

Usage: pymysql_session.py HOST PORT USER PASSWORD SCHEMA
"""

import json
import sys

import pymysql


def main():
    host, port, user, password, schema = sys.argv[1:6]
    conn = pymysql.connect(host=host, port=int(port), user=user, password=password,
                           database=schema, charset="utf8mb4", sql_mode="ANSI_QUOTES",
                           init_command="SET time_zone = '+05:00'", autocommit=True)
    cur = conn.cursor()
    out = {}
    for _ in range(3):
        cur.execute("SELECT @@sql_mode, @@time_zone, @@autocommit, @@character_set_client")
        out["sql_mode"], out["time_zone"], out["autocommit"], out["character_set_client"] = \
            cur.fetchone()
        # ANSI_QUOTES must be in force: "ok" is an identifier, not a string, here.
        cur.execute('SELECT \'ok\' AS "quoted"')
        out["quoted"] = cur.fetchone()[0]
    conn.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
