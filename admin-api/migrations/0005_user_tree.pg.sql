-- As 0005_user_tree.sql. The path is compared bytewise (COLLATE "C"): paths are digits
-- and '/', and under a linguistic collation '/' is ignored at the first level, so
-- `'/1/5/' <= path < '/1/50'` would not be the subtree.
ALTER TABLE users ADD COLUMN org_path TEXT COLLATE "C" NOT NULL DEFAULT '';
UPDATE users SET org_path = (SELECT path FROM orgs WHERE orgs.id = users.org_id);
DROP INDEX users_org_name;
CREATE INDEX users_tree ON users(org_path, name, id);
DROP INDEX users_initials;
DROP INDEX users_phone;
-- Created by earlier versions outside the migrations; unused for the same reason.
DROP INDEX IF EXISTS users_name_prefix;
