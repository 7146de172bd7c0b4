-- The seed schema: the table the prototype replicated. Idempotent.
CREATE TABLE IF NOT EXISTS itrequests (
    requestid SERIAL PRIMARY KEY,
    details   VARCHAR(60) NOT NULL,
    duedate   DATE NOT NULL,
    fulfilled BOOLEAN NOT NULL
);
