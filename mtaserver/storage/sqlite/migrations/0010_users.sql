-- Submission users: a memory-hard password hash and the domains each may send as.

CREATE TABLE users (
    name TEXT PRIMARY KEY,            -- lower-cased login name
    password_hash TEXT NOT NULL,      -- scrypt$n$r$p$salt$hash
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE user_domains (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    domain TEXT NOT NULL,             -- lower-case, IDNA A-label
    PRIMARY KEY (user, domain)
);
CREATE INDEX user_domains_domain ON user_domains(domain);
