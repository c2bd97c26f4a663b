// Starts @20minutes/s3rver, which verifies SigV4 signatures (header and
// presigned query) with its fixed credentials S3RVER / S3RVER.
// Usage: node server.js -d DIR -a 127.0.0.1 -p PORT --silent --configure-bucket NAME
'use strict';
require('@20minutes/s3rver/lib/cli').parseAsync(process.argv);
