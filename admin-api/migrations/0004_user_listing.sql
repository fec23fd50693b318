-- Subtree user listing sorts a subtree's users by name: with (org_id, name, id) the sort
-- reads index entries only, and the page's rows are fetched afterwards.
CREATE INDEX users_org_name ON users(org_id, name, id);
