
/*
 * WebSocket frames (RFC 6455, section 5): the reader of a client's frames,
 * byte by byte as they arrive (no buffer of its own beyond one control
 * frame's payload), and the header of a server frame.
 *
 * The reader checks what a server must: every client frame masked, no
 * reserved bits or opcodes, control frames unfragmented and at most 125
 * bytes, continuation frames only inside a message, a data message of at
 * most NGX_HTTP_ASYNC_DL_WS_MESSAGE_MAX bytes (this server reads no data
 * messages: it checks and drops them), text that is UTF-8, a close frame's
 * code and reason.
 */


#ifndef _NGX_HTTP_ASYNC_DL_WS_FRAME_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_WS_FRAME_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_ASYNC_DL_WS_MESSAGE_MAX   4096
#define NGX_HTTP_ASYNC_DL_WS_CONTROL_MAX   125
#define NGX_HTTP_ASYNC_DL_WS_HEAD_MAX      10     /* a server frame's */

#define NGX_HTTP_ASYNC_DL_WS_CONT          0x0
#define NGX_HTTP_ASYNC_DL_WS_TEXT          0x1
#define NGX_HTTP_ASYNC_DL_WS_BINARY        0x2
#define NGX_HTTP_ASYNC_DL_WS_CLOSE         0x8
#define NGX_HTTP_ASYNC_DL_WS_PING          0x9
#define NGX_HTTP_ASYNC_DL_WS_PONG          0xa

/* close codes (section 7.4.1) */
#define NGX_HTTP_ASYNC_DL_WS_NORMAL        1000
#define NGX_HTTP_ASYNC_DL_WS_GOING_AWAY    1001
#define NGX_HTTP_ASYNC_DL_WS_PROTOCOL      1002
#define NGX_HTTP_ASYNC_DL_WS_NO_STATUS     1005
#define NGX_HTTP_ASYNC_DL_WS_BAD_DATA      1007
#define NGX_HTTP_ASYNC_DL_WS_TOO_BIG       1009
#define NGX_HTTP_ASYNC_DL_WS_SERVER_ERROR  1011


typedef enum {
    NGX_HTTP_ASYNC_DL_WS_MORE = 0,      /* all input used, nothing whole */
    NGX_HTTP_ASYNC_DL_WS_GOT_PING,      /* payload in ctl, ctl_len */
    NGX_HTTP_ASYNC_DL_WS_GOT_PONG,
    NGX_HTTP_ASYNC_DL_WS_GOT_CLOSE,     /* code: its code, or 1005 */
    NGX_HTTP_ASYNC_DL_WS_GOT_MESSAGE,   /* a data message ended (dropped) */
    NGX_HTTP_ASYNC_DL_WS_BAD            /* code: the close code to send */
} ngx_http_async_dl_ws_got_e;


typedef struct {
    u_char          head[14];           /* the frame header read so far */
    unsigned        head_len;
    uint64_t        left;               /* payload bytes still to come */
    u_char          mask[4];
    unsigned        mask_pos;
    unsigned        opcode;             /* of the frame being read */
    unsigned        fin:1;
    unsigned        in_payload:1;       /* the header is whole */
    unsigned        in_message:1;       /* a fragmented message goes on */
    unsigned        text:1;             /* ... and it is text */
    uint64_t        message_len;
    unsigned        utf8_need;          /* continuation bytes to come */
    u_char          utf8_lo, utf8_hi;   /* the next one's range */
    u_char          ctl[NGX_HTTP_ASYNC_DL_WS_CONTROL_MAX];
    unsigned        ctl_len;
} ngx_http_async_dl_ws_reader_t;


/*
 * Reads from *pos up to last: stops after a whole control frame or data
 * message (what it was), at a fault (NGX_HTTP_ASYNC_DL_WS_BAD, *code the
 * close code to answer with), or when the input is used up (MORE); *pos
 * is where it stopped.  After BAD the reader is not to be used again.
 */
ngx_http_async_dl_ws_got_e ngx_http_async_dl_ws_read(
    ngx_http_async_dl_ws_reader_t *rd, u_char **pos, u_char *last,
    ngx_uint_t *code);

/* A server frame's header (FIN set, unmasked): its end. */
u_char *ngx_http_async_dl_ws_head(u_char *p, ngx_uint_t opcode,
    uint64_t len);


#endif /* _NGX_HTTP_ASYNC_DL_WS_FRAME_H_INCLUDED_ */
