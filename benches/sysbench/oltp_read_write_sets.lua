-- sysbench oltp_read_write with what ORMs and drivers send at connect: character set, SQL
-- mode, time zone, isolation level, autocommit. Each thread runs them once, before it prepares
-- its statements, exactly as an application's connection set-up would.
require("oltp_read_write")

local prepare_workload = prepare_statements

function prepare_statements()
   con:query("SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")
   con:query("SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'")
   con:query("SET time_zone = '+00:00'")
   con:query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
   con:query("SET autocommit = 1")
   prepare_workload()
end
