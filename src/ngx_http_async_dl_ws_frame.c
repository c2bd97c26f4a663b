
/*
 * WebSocket frames: the client's, read byte by byte; the server's header
 * (ngx_http_async_dl_ws_frame.h).
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_async_dl_ws_frame.h"


static ngx_int_t ngx_http_async_dl_ws_head_done(
    ngx_http_async_dl_ws_reader_t *rd, ngx_uint_t *code);
static ngx_int_t ngx_http_async_dl_ws_utf8(ngx_http_async_dl_ws_reader_t *rd,
    u_char *p, size_t n);
static ngx_http_async_dl_ws_got_e ngx_http_async_dl_ws_frame_done(
    ngx_http_async_dl_ws_reader_t *rd, ngx_uint_t *code);


ngx_http_async_dl_ws_got_e
ngx_http_async_dl_ws_read(ngx_http_async_dl_ws_reader_t *rd, u_char **pos,
    u_char *last, ngx_uint_t *code)
{
    u_char                      *p, *start;
    size_t                       n, i, want;
    ngx_http_async_dl_ws_got_e   got;

    p = *pos;

    while (p < last) {

        if (!rd->in_payload) {
            /* the header: 2 bytes, then its length and mask */
            rd->head[rd->head_len++] = *p++;

            if (rd->head_len < 2) {
                continue;
            }

            want = 2 + 4;

            if ((rd->head[1] & 0x7f) == 126) {
                want += 2;

            } else if ((rd->head[1] & 0x7f) == 127) {
                want += 8;
            }

            if (rd->head_len == 2 && !(rd->head[1] & 0x80)) {
                /* a client's frames are masked (5.1) */
                *pos = p;
                *code = NGX_HTTP_ASYNC_DL_WS_PROTOCOL;
                return NGX_HTTP_ASYNC_DL_WS_BAD;
            }

            if (rd->head_len < want) {
                continue;
            }

            if (ngx_http_async_dl_ws_head_done(rd, code) != NGX_OK) {
                *pos = p;
                return NGX_HTTP_ASYNC_DL_WS_BAD;
            }

            if (rd->left > 0) {
                continue;
            }

        } else {
            /* the payload: unmasked in place, checked, dropped or kept */
            n = (size_t) ngx_min((uint64_t) (last - p), rd->left);
            start = p;

            for (i = 0; i < n; i++) {
                p[i] ^= rd->mask[rd->mask_pos++ & 3];
            }

            p += n;
            rd->left -= n;

            if (rd->opcode >= NGX_HTTP_ASYNC_DL_WS_CLOSE) {
                ngx_memcpy(rd->ctl + rd->ctl_len, start, n);
                rd->ctl_len += n;

            } else if (rd->text
                       && ngx_http_async_dl_ws_utf8(rd, start, n) != NGX_OK)
            {
                *pos = p;
                *code = NGX_HTTP_ASYNC_DL_WS_BAD_DATA;
                return NGX_HTTP_ASYNC_DL_WS_BAD;
            }

            if (rd->left > 0) {
                continue;
            }
        }

        /* a whole frame */
        got = ngx_http_async_dl_ws_frame_done(rd, code);

        if (got != NGX_HTTP_ASYNC_DL_WS_MORE) {
            *pos = p;
            return got;
        }
    }

    *pos = p;

    return NGX_HTTP_ASYNC_DL_WS_MORE;
}


/* the header is whole: its rules */

static ngx_int_t
ngx_http_async_dl_ws_head_done(ngx_http_async_dl_ws_reader_t *rd,
    ngx_uint_t *code)
{
    u_char     *m;
    uint64_t    len;
    ngx_uint_t  i, opcode;

    *code = NGX_HTTP_ASYNC_DL_WS_PROTOCOL;

    if (rd->head[0] & 0x70) {
        return NGX_ERROR;                       /* no extension was agreed */
    }

    opcode = rd->head[0] & 0x0f;
    rd->fin = (rd->head[0] & 0x80) ? 1 : 0;

    len = rd->head[1] & 0x7f;
    m = &rd->head[2];

    if (len == 126) {
        len = ((uint64_t) rd->head[2] << 8) | rd->head[3];
        m = &rd->head[4];

        if (len < 126) {
            return NGX_ERROR;                   /* not the minimal length */
        }

    } else if (len == 127) {
        if (rd->head[2] & 0x80) {
            return NGX_ERROR;
        }

        len = 0;

        for (i = 2; i < 10; i++) {
            len = (len << 8) | rd->head[i];
        }

        m = &rd->head[10];

        if (len <= 0xffff) {
            return NGX_ERROR;
        }
    }

    ngx_memcpy(rd->mask, m, 4);
    rd->mask_pos = 0;
    rd->left = len;
    rd->in_payload = 1;

    switch (opcode) {

    case NGX_HTTP_ASYNC_DL_WS_CLOSE:
    case NGX_HTTP_ASYNC_DL_WS_PING:
    case NGX_HTTP_ASYNC_DL_WS_PONG:
        if (!rd->fin || len > NGX_HTTP_ASYNC_DL_WS_CONTROL_MAX) {
            return NGX_ERROR;
        }

        rd->ctl_len = 0;
        break;

    case NGX_HTTP_ASYNC_DL_WS_TEXT:
    case NGX_HTTP_ASYNC_DL_WS_BINARY:
        if (rd->in_message) {
            return NGX_ERROR;                   /* the last one is not over */
        }

        rd->in_message = 1;
        rd->text = (opcode == NGX_HTTP_ASYNC_DL_WS_TEXT);
        rd->message_len = 0;
        rd->utf8_need = 0;
        break;

    case NGX_HTTP_ASYNC_DL_WS_CONT:
        if (!rd->in_message) {
            return NGX_ERROR;
        }

        break;

    default:
        return NGX_ERROR;                       /* reserved opcodes */
    }

    rd->opcode = opcode;

    if (opcode < NGX_HTTP_ASYNC_DL_WS_CLOSE) {
        rd->message_len += len;

        if (rd->message_len > NGX_HTTP_ASYNC_DL_WS_MESSAGE_MAX) {
            *code = NGX_HTTP_ASYNC_DL_WS_TOO_BIG;
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a frame's payload is all in */

static ngx_http_async_dl_ws_got_e
ngx_http_async_dl_ws_frame_done(ngx_http_async_dl_ws_reader_t *rd,
    ngx_uint_t *code)
{
    ngx_uint_t  opcode, c;

    opcode = rd->opcode;
    rd->head_len = 0;
    rd->in_payload = 0;

    switch (opcode) {

    case NGX_HTTP_ASYNC_DL_WS_PING:
        return NGX_HTTP_ASYNC_DL_WS_GOT_PING;

    case NGX_HTTP_ASYNC_DL_WS_PONG:
        return NGX_HTTP_ASYNC_DL_WS_GOT_PONG;

    case NGX_HTTP_ASYNC_DL_WS_CLOSE:
        if (rd->ctl_len == 0) {
            *code = NGX_HTTP_ASYNC_DL_WS_NO_STATUS;
            return NGX_HTTP_ASYNC_DL_WS_GOT_CLOSE;
        }

        c = ((ngx_uint_t) rd->ctl[0] << 8) | rd->ctl[1];

        /* a code alone, or with a UTF-8 reason; codes a peer may send */
        if (rd->ctl_len == 1
            || c < 1000 || c >= 5000 || c == 1004 || c == 1005 || c == 1006
            || (c >= 1015 && c < 3000))
        {
            *code = NGX_HTTP_ASYNC_DL_WS_PROTOCOL;
            return NGX_HTTP_ASYNC_DL_WS_BAD;
        }

        rd->utf8_need = 0;

        if (ngx_http_async_dl_ws_utf8(rd, rd->ctl + 2, rd->ctl_len - 2)
            != NGX_OK
            || rd->utf8_need)
        {
            *code = NGX_HTTP_ASYNC_DL_WS_BAD_DATA;
            return NGX_HTTP_ASYNC_DL_WS_BAD;
        }

        *code = c;
        return NGX_HTTP_ASYNC_DL_WS_GOT_CLOSE;

    default:
        if (!rd->fin) {
            return NGX_HTTP_ASYNC_DL_WS_MORE;   /* the message goes on */
        }

        rd->in_message = 0;

        if (rd->text && rd->utf8_need) {
            *code = NGX_HTTP_ASYNC_DL_WS_BAD_DATA;
            return NGX_HTTP_ASYNC_DL_WS_BAD;
        }

        return NGX_HTTP_ASYNC_DL_WS_GOT_MESSAGE;
    }
}


/* UTF-8 as RFC 3629 has it: no overlong forms, surrogates or > U+10FFFF */

static ngx_int_t
ngx_http_async_dl_ws_utf8(ngx_http_async_dl_ws_reader_t *rd, u_char *p,
    size_t n)
{
    u_char  c, *last;

    for (last = p + n; p < last; p++) {
        c = *p;

        if (rd->utf8_need) {
            if (c < rd->utf8_lo || c > rd->utf8_hi) {
                return NGX_ERROR;
            }

            rd->utf8_need--;
            rd->utf8_lo = 0x80;
            rd->utf8_hi = 0xbf;
            continue;
        }

        if (c < 0x80) {
            continue;
        }

        rd->utf8_lo = 0x80;
        rd->utf8_hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf) {
            rd->utf8_need = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            rd->utf8_need = 2;

            if (c == 0xe0) {
                rd->utf8_lo = 0xa0;

            } else if (c == 0xed) {
                rd->utf8_hi = 0x9f;
            }

        } else if (c >= 0xf0 && c <= 0xf4) {
            rd->utf8_need = 3;

            if (c == 0xf0) {
                rd->utf8_lo = 0x90;

            } else if (c == 0xf4) {
                rd->utf8_hi = 0x8f;
            }

        } else {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


u_char *
ngx_http_async_dl_ws_head(u_char *p, ngx_uint_t opcode, uint64_t len)
{
    ngx_uint_t  i;

    *p++ = (u_char) (0x80 | opcode);

    if (len < 126) {
        *p++ = (u_char) len;

    } else if (len <= 0xffff) {
        *p++ = 126;
        *p++ = (u_char) (len >> 8);
        *p++ = (u_char) len;

    } else {
        *p++ = 127;

        for (i = 8; i > 0; i--) {
            *p++ = (u_char) (len >> ((i - 1) * 8));
        }
    }

    return p;
}
