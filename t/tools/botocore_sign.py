#!/usr/bin/python3
"""Reference side of t/010-sigv4.t: signs with botocore (Debian python3-boto3).

Takes the same arguments as sigv4_tool presign|sign and prints the same
"name: value" lines, plus "via: ..." telling which botocore path was used.

presign goes through the real S3 client (generate_presigned_url) whenever the
query/header set maps onto an S3 operation, so botocore's own addressing, key
encoding and parameter order are what we compare against; otherwise it falls
back to S3SigV4QueryAuth on a raw AWSRequest.  sign uses S3SigV4Auth on an
AWSRequest whose URL comes from the client.  The clock is frozen by replacing
botocore.auth.datetime (botocore calls datetime.datetime.utcnow()).
"""
import argparse
import datetime
import sys

import botocore.auth
import botocore.session
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence

RESPONSE = {
    'response-cache-control': 'ResponseCacheControl',
    'response-content-disposition': 'ResponseContentDisposition',
    'response-content-encoding': 'ResponseContentEncoding',
    'response-content-language': 'ResponseContentLanguage',
    'response-content-type': 'ResponseContentType',
}


def freeze_clock(epoch):
    fixed = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    fixed = fixed.replace(tzinfo=None)

    class FrozenDateTime(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return fixed

    class FrozenModule:
        datetime = FrozenDateTime

    botocore.auth.datetime = FrozenModule


def client_op(a, query, headers):
    """Map the request onto an S3 client operation, or None."""
    names = [k for k, _ in query]
    hdrs = [k.lower() for k, _ in headers]
    p = {'Bucket': a.bucket, 'Key': a.key}
    if a.method == 'GET' and not hdrs and all(n in RESPONSE for n in names):
        p.update((RESPONSE[k], v) for k, v in query)
        return 'get_object', p
    if hdrs and set(hdrs) != {'content-type'}:
        return None
    ctype = {'ContentType': v.strip() for k, v in headers}
    if a.method == 'PUT' and not names:
        return 'put_object', dict(p, **ctype)
    if hdrs:
        return None
    if a.method == 'PUT' and sorted(names) == ['partNumber', 'uploadId']:
        for k, v in query:
            if k == 'partNumber':
                p['PartNumber'] = int(v)
            else:
                p['UploadId'] = v
        return 'upload_part', p
    if a.method == 'POST' and query == [('uploads', '')]:
        return 'create_multipart_upload', p
    ops = {('HEAD', ()): 'head_object', ('DELETE', ()): 'delete_object',
           ('POST', ('uploadId',)): 'complete_multipart_upload',
           ('DELETE', ('uploadId',)): 'abort_multipart_upload',
           ('GET', ('uploadId',)): 'list_parts'}
    op = ops.get((a.method, tuple(names)))
    if op:
        p.update(('UploadId', v) for _, v in query)
        return op, p
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('mode', choices=['presign', 'sign'])
    for o in ('endpoint', 'bucket', 'region', 'access', 'secret', 'method'):
        ap.add_argument('--' + o, required=True)
    ap.add_argument('--key', default='')
    ap.add_argument('--service', default='s3')
    ap.add_argument('--token')
    ap.add_argument('--time', type=int, required=True)
    ap.add_argument('--expires', type=int, default=3600)
    ap.add_argument('--virtual', action='store_true')
    ap.add_argument('--query', action='append', default=[])
    ap.add_argument('--header', action='append', default=[])
    ap.add_argument('--body')
    ap.add_argument('--payload')
    a = ap.parse_args()

    query = [tuple(q.split('=', 1)) if '=' in q else (q, '') for q in a.query]
    headers = [tuple(h.split(':', 1)) for h in a.header]
    freeze_clock(a.time)
    creds = Credentials(a.access, a.secret, a.token)
    client = botocore.session.get_session().create_client(
        's3', region_name=a.region, endpoint_url=a.endpoint,
        aws_access_key_id=a.access, aws_secret_access_key=a.secret,
        aws_session_token=a.token,
        config=Config(signature_version='s3v4', s3={
            'addressing_style': 'virtual' if a.virtual else 'path'}))

    op = client_op(a, query, headers) if a.service == 's3' else None
    if a.mode == 'presign' and op:
        url = client.generate_presigned_url(op[0], Params=op[1],
                                            ExpiresIn=a.expires,
                                            HttpMethod=a.method)
        via = 'client ' + op[0]
    else:
        # the client still decides addressing and key encoding
        if a.key:
            base = client.generate_presigned_url(
                'head_object', Params={'Bucket': a.bucket, 'Key': a.key})
        else:
            base = client.generate_presigned_url(
                'head_bucket', Params={'Bucket': a.bucket})
        url = base.split('?')[0]
        if query:
            url += '?' + percent_encode_sequence(query)
        req = AWSRequest(method=a.method, url=url,
                         data=(a.body or '').encode('utf-8'))
        for k, v in headers:
            req.headers[k] = v      # appends: duplicates are kept
        if a.mode == 'presign':
            botocore.auth.S3SigV4QueryAuth(creds, a.service, a.region,
                                           expires=a.expires).add_auth(req)
            url, via = req.url, 'S3SigV4QueryAuth'
        else:
            if a.payload == 'UNSIGNED-PAYLOAD':
                req.context['client_config'] = Config(
                    s3={'payload_signing_enabled': False})
            elif a.payload is not None:
                sys.exit('botocore_sign.py: use --body, not --payload HASH')
            botocore.auth.S3SigV4Auth(creds, a.service, a.region).add_auth(req)
            via = 'S3SigV4Auth'

    print('host: ' + botocore.auth._host_from_url(url))
    print('url: ' + url)
    if a.mode == 'sign':
        for h in ('Authorization', 'X-Amz-Date', 'X-Amz-Content-SHA256'):
            print(f'{h.lower()}: {req.headers[h]}')
    print('via: ' + via)


if __name__ == '__main__':
    main()
