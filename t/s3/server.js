// Starts @20minutes/s3rver, which verifies SigV4 signatures (header and
// presigned query) with its fixed credentials S3RVER / S3RVER.
// Usage: node server.js -d DIR -a 127.0.0.1 -p PORT --silent --configure-bucket NAME
'use strict';

// s3rver 4.0.4 canonicalises presigned query values with plain
// encodeURIComponent, which leaves !'()* unencoded, where SigV4 (and AWS,
// and botocore) encode them: every link with
// response-content-disposition "filename*=UTF-8''..." would be refused.
// Make the global encoder RFC 3986 strict, as AWS's own is.
const plain = globalThis.encodeURIComponent;
globalThis.encodeURIComponent = (s) =>
  plain(s).replace(/[!'()*]/g,
    (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());

require('@20minutes/s3rver/lib/cli').parseAsync(process.argv);
