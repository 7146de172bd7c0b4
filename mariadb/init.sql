-- The target database and the pipeline's user. wasmcdc creates the tables
-- itself from the PostgreSQL catalog. Idempotent.
CREATE DATABASE IF NOT EXISTS requests;
CREATE USER IF NOT EXISTS 'mariadb'@'localhost' IDENTIFIED BY 'mariadb';
CREATE USER IF NOT EXISTS 'mariadb'@'127.0.0.1' IDENTIFIED BY 'mariadb';
CREATE USER IF NOT EXISTS 'mariadb'@'%' IDENTIFIED BY 'mariadb';
GRANT ALL PRIVILEGES ON requests.* TO 'mariadb'@'localhost', 'mariadb'@'127.0.0.1', 'mariadb'@'%';
FLUSH PRIVILEGES;
