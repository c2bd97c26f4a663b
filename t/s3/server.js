// Starts @20minutes/s3rver, which verifies SigV4 signatures (header and
// presigned query) with its fixed credentials S3RVER / S3RVER.
// Usage: node server.js -d DIR -a 127.0.0.1 -p PORT --silent --configure-bucket NAME
'use strict';

const fs = require('fs');
const path = require('path');

// s3rver 4.0.4 canonicalises presigned query values with plain
// encodeURIComponent, which leaves !'()* unencoded, where SigV4 (and AWS,
// and botocore) encode them: every link with
// response-content-disposition "filename*=UTF-8''..." would be refused.
// Make the global encoder RFC 3986 strict, as AWS's own is.
const plain = globalThis.encodeURIComponent;
globalThis.encodeURIComponent = (s) =>
  plain(s).replace(/[!'()*]/g,
    (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());

// s3rver writes an object (or a part) straight into its final file, so a
// PUT whose client goes away mid-body leaves a truncated object where S3
// leaves nothing (and keeps the previous version).  Write beside the
// store (DIR + "-partial", same file system) and rename on success only,
// so that a PUT is all or nothing, as on S3.
const FilesystemStore = require('@20minutes/s3rver/lib/stores/filesystem');
const putContent = FilesystemStore.prototype.putContent;
let seq = 0;
FilesystemStore.prototype.putContent = async function (target, content) {
  const dir = path.resolve(this.rootDirectory) + '-partial';
  await fs.promises.mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `${process.pid}-${++seq}`);
  try {
    const result = await putContent.call(this, tmp, content);
    await fs.promises.rename(tmp, target);
    return result;
  } catch (err) {
    await fs.promises.unlink(tmp).catch(() => {});
    throw err;
  }
};

require('@20minutes/s3rver/lib/cli').parseAsync(process.argv);
