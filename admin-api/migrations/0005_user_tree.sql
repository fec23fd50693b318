-- Each user carries the materialised path of their organisation, so a subtree's users
-- are one contiguous range of an index ordered (org path, name, id): a page of a county
-- (30,000 people) is read in order from the index instead of gathering and sorting the
-- whole subtree. The path is kept in step by every write that sets `org_id` and by
-- subtree moves (`directory.rs`). PostgreSQL's version (0005_user_tree.pg.sql) differs
-- only in the column's collation.
ALTER TABLE users ADD COLUMN org_path TEXT NOT NULL DEFAULT '';
UPDATE users SET org_path = (SELECT path FROM orgs WHERE orgs.id = users.org_id);
DROP INDEX users_org_name;
CREATE INDEX users_tree ON users(org_path, name, id);
-- No query can use these: search matches substrings (`LIKE '%…%'`) OR-ed together, which
-- neither database answers from an index; each only made every user write slower.
DROP INDEX users_initials;
DROP INDEX users_phone;
