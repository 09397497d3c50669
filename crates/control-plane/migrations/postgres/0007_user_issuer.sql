-- The external identity provider whose tokens act as a user (its `iss`); NULL: a local
-- user, whom no external token can act as, whatever its claims say.
ALTER TABLE users ADD COLUMN issuer TEXT;
