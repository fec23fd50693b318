-- Recording catalogue (data only): the recorder registers recordings and their
-- fragment files; owners share them with chosen users until an expiry.

CREATE TABLE recordings (
    id BIGINT PRIMARY KEY,
    meeting_id BIGINT NOT NULL REFERENCES meetings(id),
    owner_id BIGINT NOT NULL REFERENCES users(id),
    org_id BIGINT NOT NULL REFERENCES orgs(id),
    title TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL DEFAULT 0,
    -- recording | ready | failed | deleted
    status TEXT NOT NULL DEFAULT 'recording',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX recordings_owner ON recordings(owner_id);
CREATE INDEX recordings_meeting ON recordings(meeting_id);
CREATE INDEX recordings_org ON recordings(org_id);

CREATE TABLE recording_files (
    recording_id BIGINT NOT NULL REFERENCES recordings(id),
    seq BIGINT NOT NULL,
    path TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (recording_id, seq)
);

CREATE TABLE recording_shares (
    recording_id BIGINT NOT NULL REFERENCES recordings(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    -- NULL: no expiry
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (recording_id, user_id)
);
CREATE INDEX recording_shares_user ON recording_shares(user_id);
