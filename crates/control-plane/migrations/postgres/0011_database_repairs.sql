-- A repair an operator asked for on one node's copy of a database (`edgefn db repair`):
-- carried in that node's desired state until the node reports the file holds it.
ALTER TABLE node_databases ADD COLUMN repair_id TEXT;
ALTER TABLE node_databases ADD COLUMN repair_action TEXT;
