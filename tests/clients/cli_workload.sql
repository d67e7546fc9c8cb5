-- Run by tests/relay_clients.rs with the mariadb CLI, directly and through Sluice; the outputs
-- must be identical. @INFILE@ is replaced with a CSV file's path.
CREATE TABLE c (id INT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2), data BLOB, note TEXT);
INSERT INTO c VALUES (1, 'one', 1.50, x'00ff10', NULL), (2, 'twö', -3.25, '', 'n');
SELECT * FROM c ORDER BY id;
SELECT id, HEX(data), note IS NULL FROM c ORDER BY id\G
BEGIN;
UPDATE c SET price = price * 2;
SELECT SUM(price) FROM c;
ROLLBACK;
SELECT SUM(price) FROM c;
SELECT 1 AS a; SELECT 'b' AS b;
DELIMITER //
CREATE PROCEDURE p2() BEGIN SELECT 'from' AS w; SELECT 'procedure' AS x; END //
DELIMITER ;
CALL p2();
LOAD DATA LOCAL INFILE '@INFILE@' INTO TABLE c FIELDS TERMINATED BY ',' (id, name);
SELECT COUNT(*), MAX(id) FROM c;
SHOW COLUMNS FROM c;
USE mysql;
SELECT DATABASE();
SELECT * FROM no_such_table;
SELECT 'after the error' AS still;
