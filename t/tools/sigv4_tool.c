/*
 * Test CLI around common/adl_sigv4.c; t/tools/botocore_sign.py takes the
 * same arguments and prints the same "name: value" lines from botocore.
 *
 *   sigv4_tool presign|sign --endpoint URL --bucket B [--key K] [--virtual]
 *       --region R [--service S] --access AK --secret SK [--token T]
 *       --time EPOCH --method M [--query NAME=VALUE]... [--header 'N: V']...
 *       [--expires N] (presign)  [--body STR | --payload HASH] (sign)
 *   sigv4_tool disposition NAME
 *   sigv4_tool sha256 STRING     (one-shot and streamed; must agree)
 *   sigv4_tool encode [--slash] STRING
 *   sigv4_tool selftest          (every output buffer size from 0 up)
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adl_sigv4.h"

#define MAXKV  64


static int
usage(const char *msg)
{
    fprintf(stderr, "sigv4_tool: %s\n", msg);
    return 2;
}


static int
cmd_sign(int presign, int argc, char **argv)
{
    adl_sigv4_creds_t  c;
    adl_sigv4_req_t    r;
    adl_kv_t           q[MAXKV], h[MAXKV];
    const char        *endpoint = NULL, *bucket = NULL, *key = "";
    const char        *body = NULL, *opt, *val;
    char               scheme[16], host[512], path[4096], epath[12288];
    char               qs[16384], auth[2048], date[17], hash[65], *p;
    unsigned           expires = 3600;
    int                i, virt = 0;

    memset(&c, 0, sizeof(c));
    memset(&r, 0, sizeof(r));
    c.service = "s3";
    r.query = q;
    r.headers = h;

    for (i = 0; i < argc; i++) {
        opt = argv[i];
        if (strcmp(opt, "--virtual") == 0) {
            virt = 1;
            continue;
        }
        if (i + 1 >= argc) {
            return usage("option without value");
        }
        val = argv[++i];
        if (strcmp(opt, "--endpoint") == 0) {
            endpoint = val;
        } else if (strcmp(opt, "--bucket") == 0) {
            bucket = val;
        } else if (strcmp(opt, "--key") == 0) {
            key = val;
        } else if (strcmp(opt, "--region") == 0) {
            c.region = val;
        } else if (strcmp(opt, "--service") == 0) {
            c.service = val;
        } else if (strcmp(opt, "--access") == 0) {
            c.access_key = val;
        } else if (strcmp(opt, "--secret") == 0) {
            c.secret_key = val;
        } else if (strcmp(opt, "--token") == 0) {
            c.session_token = val;
        } else if (strcmp(opt, "--time") == 0) {
            r.now = (time_t) strtoll(val, NULL, 10);
        } else if (strcmp(opt, "--method") == 0) {
            r.method = val;
        } else if (strcmp(opt, "--expires") == 0) {
            expires = (unsigned) strtoul(val, NULL, 10);
        } else if (strcmp(opt, "--body") == 0) {
            body = val;
        } else if (strcmp(opt, "--payload") == 0) {
            r.payload_hash = val;
        } else if (strcmp(opt, "--query") == 0 && r.nquery < MAXKV) {
            /* the tool owns argv copies: split NAME=VALUE in place */
            p = strchr(val, '=');
            if (p != NULL) {
                *p++ = '\0';
            }
            q[r.nquery].name = val;
            q[r.nquery++].value = p;
        } else if (strcmp(opt, "--header") == 0 && r.nheaders < MAXKV) {
            p = strchr(val, ':');
            if (p == NULL) {
                return usage("--header needs 'Name: value'");
            }
            *p++ = '\0';
            h[r.nheaders].name = val;
            h[r.nheaders++].value = p;
        } else {
            return usage("unknown option");
        }
    }

    if (adl_s3_locate(endpoint, bucket, virt, key, scheme, sizeof(scheme),
                      host, sizeof(host), path, sizeof(path)) != 0)
    {
        return usage("adl_s3_locate failed");
    }
    r.host = host;
    r.path = path;
    if (adl_uri_encode(path, strlen(path), epath, sizeof(epath), 1) < 0) {
        return usage("adl_uri_encode failed");
    }
    printf("host: %s\n", host);

    if (presign) {
        if (adl_sigv4_presign_query(&c, &r, expires, qs, sizeof(qs)) < 0) {
            return usage("adl_sigv4_presign_query failed");
        }
        printf("url: %s://%s%s?%s\n", scheme, host, epath, qs);
        return 0;
    }

    if (body != NULL) {
        if (adl_sha256_hex(body, strlen(body), hash) != 0) {
            return usage("adl_sha256_hex failed");
        }
        r.payload_hash = hash;
    }
    if (adl_query_string(q, r.nquery, qs, sizeof(qs)) < 0
        || adl_sigv4_sign_headers(&c, &r, auth, sizeof(auth), date) != 0)
    {
        return usage("adl_sigv4_sign_headers failed");
    }
    printf("url: %s://%s%s%s%s\n", scheme, host, epath, qs[0] ? "?" : "", qs);
    printf("authorization: %s\nx-amz-date: %s\nx-amz-content-sha256: %s\n",
           auth, date, r.payload_hash);
    return 0;
}


/* Each writer must fail for every too-small buffer and fit exactly. */
static int
cmd_selftest(void)
{
    static const adl_kv_t     q[] = { { "partNumber", "1" },
                                      { "uploadId", "a/b c" } };
    static const adl_kv_t     h[] = { { "Content-Type", " text/plain " } };
    static const char         name[] = "r\xc3\xa9sum\xc3\xa9 \"v2\".pdf";
    adl_sigv4_creds_t         c = { "AK", "SK", "TOKEN", "us-east-1", "s3" };
    adl_sigv4_req_t           r = { "PUT", "h:9000", "/b/\xc3\xbc k", q, 2,
                                    h, 1, ADL_UNSIGNED_PAYLOAD, 1700000000 };
    char                      full[4096], *buf, date[17], x[64], y[64];
    size_t                    len, need, which;
    ssize_t                   n;
    int                       failures = 0;

    for (which = 0; which < 7; which++) {
        need = 0;
        for (len = 0; len < sizeof(full); len++) {
            /* a fresh heap block of exactly len bytes: ASan sees overruns */
            buf = malloc(len ? len : 1);
            if (buf == NULL) {
                return usage("out of memory");
            }
            switch (which) {
            case 0:
                n = adl_sigv4_presign_query(&c, &r, 60, buf, len);
                break;
            case 1:
                n = adl_sigv4_sign_headers(&c, &r, buf, len, date);
                n = (n == 0) ? (ssize_t) strlen(buf) : -1;
                break;
            case 2:
                n = adl_uri_encode(name, sizeof(name) - 1, buf, len, 0);
                break;
            case 3:
                n = adl_content_disposition(name, sizeof(name) - 1, buf, len);
                break;
            case 4:
                n = adl_query_string(q, 2, buf, len);
                break;
            case 5:
                n = adl_s3_locate("http://Host:8080/p/", "bucket", 1, "k",
                                  x, sizeof(x), buf, len, y, sizeof(y));
                n = (n == 0) ? (ssize_t) strlen(buf) : -1;
                break;
            default:
                n = adl_s3_locate("http://h", "bucket", 0, "a/b", x,
                                  sizeof(x), y, sizeof(y), buf, len);
                n = (n == 0) ? (ssize_t) strlen(buf) : -1;
                break;
            }
            if (n >= 0) {
                need = len;
                if ((size_t) n + 1 != len || strlen(buf) != (size_t) n) {
                    failures++;
                }
                memcpy(full, buf, (size_t) n + 1);
            }
            free(buf);
            if (n >= 0) {
                break;
            }
        }
        printf("%s %zu: %s\n", need ? "ok" : "FAIL", need, full);
        failures += (need == 0);
    }
    return failures ? 1 : 0;
}


int
main(int argc, char **argv)
{
    adl_sha256_t  sha;
    char          buf[16384], hex[65], hex2[65];
    size_t        i, n;
    int           slash;

    if (argc == 2 && strcmp(argv[1], "selftest") == 0) {
        return cmd_selftest();
    }
    if (argc < 3) {
        return usage("usage: see the comment at the top of sigv4_tool.c");
    }
    if (strcmp(argv[1], "presign") == 0 || strcmp(argv[1], "sign") == 0) {
        return cmd_sign(argv[1][0] == 'p', argc - 2, argv + 2);
    }
    if (strcmp(argv[1], "disposition") == 0) {
        if (adl_content_disposition(argv[2], strlen(argv[2]), buf,
                                    sizeof(buf)) < 0)
        {
            return usage("adl_content_disposition failed");
        }
        printf("%s\n", buf);
        return 0;
    }
    if (strcmp(argv[1], "sha256") == 0) {
        n = strlen(argv[2]);
        memset(&sha, 0, sizeof(sha));
        if (adl_sha256_hex(argv[2], n, hex) != 0
            || adl_sha256_init(&sha) != 0)
        {
            adl_sha256_free(&sha);
            return usage("sha256 failed");
        }
        /* odd-sized pieces exercise the streaming path */
        for (i = 0; i < n; i += 3) {
            if (adl_sha256_update(&sha, argv[2] + i, n - i < 3 ? n - i : 3)) {
                adl_sha256_free(&sha);
                return usage("adl_sha256_update failed");
            }
        }
        if (adl_sha256_final_hex(&sha, hex2) != 0 || strcmp(hex, hex2)) {
            adl_sha256_free(&sha);
            return usage("streamed sha256 differs");
        }
        adl_sha256_free(&sha);
        printf("%s\n", hex);
        return 0;
    }
    if (strcmp(argv[1], "encode") == 0) {
        slash = (strcmp(argv[2], "--slash") == 0);
        if (slash && argc < 4) {
            return usage("encode needs a string");
        }
        if (adl_uri_encode(argv[2 + slash], strlen(argv[2 + slash]), buf,
                           sizeof(buf), slash) < 0)
        {
            return usage("adl_uri_encode failed");
        }
        printf("%s\n", buf);
        return 0;
    }
    return usage("unknown command");
}
