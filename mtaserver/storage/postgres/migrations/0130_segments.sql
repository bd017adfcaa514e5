-- Saved segments (SQLite's 0130_segments), and SQLite's julianday() for the filter
-- compiler's date comparisons.
--
-- mta_julianday is SQLite's own arithmetic (computeJD) on the ISO 8601 forms a segment
-- compares ("2026-01-31", "2026-01-31T09:00", "…:00.5Z", "…+02:00"; day 31 of any month
-- rolls over as in SQLite), so the same attribute is the same day on both backends; text
-- that is not such a date is NULL (never a cast error that would fail the whole query).

CREATE FUNCTION mta_julianday(t text) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    p text[];
    y bigint; m bigint; d bigint; a bigint; b bigint;
    hh bigint := 0; mi bigint := 0; s double precision := 0; tz bigint := 0;
    ms bigint;
BEGIN
    p := regexp_match(t, '^(-?)([0-9]{4})-([0-9]{2})-([0-9]{2})[T\s]*'
        '(?:([0-9]{2}):([0-9]{2})(?::([0-9]{2}(?:\.[0-9]+)?))?\s*'
        '(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))?\s*)?$');
    IF p IS NULL THEN
        RETURN NULL;
    END IF;
    y := p[2]::bigint; m := p[3]::bigint; d := p[4]::bigint;
    IF p[1] = '-' THEN y := -y; END IF;
    IF m < 1 OR m > 12 OR d < 1 OR d > 31 THEN
        RETURN NULL;
    END IF;
    IF p[5] IS NOT NULL THEN
        hh := p[5]::bigint; mi := p[6]::bigint;
        s := coalesce(p[7]::double precision, 0);
        IF hh > 24 OR mi > 59 OR s >= 60 THEN
            RETURN NULL;
        END IF;
        IF p[9] IS NOT NULL THEN
            IF p[10]::bigint > 14 OR p[11]::bigint > 59 THEN
                RETURN NULL;
            END IF;
            tz := (p[10]::bigint * 60 + p[11]::bigint) * (CASE WHEN p[9] = '-' THEN -1 ELSE 1 END);
        END IF;
    END IF;
    IF m <= 2 THEN
        y := y - 1; m := m + 12;
    END IF;
    a := trunc(y / 100.0);
    b := 2 - a + trunc(a / 4.0);
    ms := trunc(((trunc(36525 * (y + 4716) / 100.0) + trunc(306001 * (m + 1) / 10000.0) + d + b)
                 - 1524.5) * 86400000);
    ms := ms + hh * 3600000 + mi * 60000 + trunc(s * 1000 + 0.5) - tz * 60000;
    RETURN ms::double precision / 86400000.0::double precision;  -- as SQLite: iJD/86400000.0
END
$$;

CREATE TABLE segments (
    id bigserial PRIMARY KEY,
    owner text NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name text NOT NULL,
    filter text NOT NULL,            -- the JSON document as given (canonical text)
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    UNIQUE (owner, name)
);
