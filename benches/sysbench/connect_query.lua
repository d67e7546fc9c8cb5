-- One client session per event: connect (and log in), run one query, close.
-- sysbench's "transactions" are then sessions set up and torn down.

sysbench.cmdline.options = {
   tables = {"Accepted for a common command line; unused", 1},
   table_size = {"Accepted for a common command line; unused", 1},
}

function thread_init()
   drv = sysbench.sql.driver()
end

function event()
   local con = drv:connect()
   con:query("SELECT 1")
   con:disconnect()
end
