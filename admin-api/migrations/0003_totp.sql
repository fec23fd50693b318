-- Optional TOTP second factor (RFC 6238). One row per account that enrolled; the
-- factor is active once confirmed_at is set. last_step is the last 30 s step whose
-- code was accepted: codes of that step or earlier are refused (replay).
-- (users.totp_secret from 0001 stays unused: a separate table keeps the pending and
-- replay state together and out of the hot users row.)

CREATE TABLE totp_factors (
    user_id BIGINT PRIMARY KEY REFERENCES users(id),
    secret TEXT NOT NULL,
    confirmed_at BIGINT,
    last_step BIGINT NOT NULL DEFAULT -1,
    created_at BIGINT NOT NULL
);
