#ifndef ADL_MIGRATIONS_H
#define ADL_MIGRATIONS_H

#include <stddef.h>

/* The schema migrations, sql/NNN_name.sql, linked into the worker by
 * scripts/embed-sql.sh; the table ends with a { 0, NULL, NULL } entry. */
typedef struct {
    int          version;
    const char  *name;
    const char  *sql;
} adl_migration_t;

extern const adl_migration_t  adl_migrations[];

#endif /* ADL_MIGRATIONS_H */
