"""Logs in with PyMySQL, over TLS or not, and prints what the session looks like as JSON.

Usage: pymysql_tls.py HOST PORT USER PASSWORD CA_FILE|plain [MAX_TLS_VERSION]

With a CA file the certificate must chain to it and name HOST. MAX_TLS_VERSION is 1.2 or 1.3.
A refused login prints {"error": CODE, "message": ...} and exits 0, so the caller can assert on
the code; any other failure exits non-zero.
"""

import json
import ssl
import sys

import pymysql


def main():
    host, port, user, password, ca = sys.argv[1:6]
    max_version = sys.argv[6] if len(sys.argv) > 6 else None
    kwargs = dict(host=host, port=int(port), user=user, password=password, connect_timeout=30)
    if ca == "plain":
        kwargs["ssl_disabled"] = True
    else:
        ctx = ssl.create_default_context(cafile=ca)
        if max_version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        kwargs["ssl"] = ctx
    try:
        conn = pymysql.connect(**kwargs)
    except pymysql.err.OperationalError as e:
        print(json.dumps({"error": e.args[0], "message": str(e.args[1]) if len(e.args) > 1 else ""}))
        return
    sock = conn._sock
    version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
    with conn.cursor() as cur:
        cur.execute("SELECT 6 * 7")
        (answer,) = cur.fetchone()
    conn.close()
    print(json.dumps({"tls": version, "answer": answer}))


if __name__ == "__main__":
    main()
