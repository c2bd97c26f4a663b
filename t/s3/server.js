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

// s3rver's DeleteObject then removes the key's directories that became
// empty, with a readdir and a recursive rm that race: two deletes of keys
// under one prefix (a job's files and its bundle, deleted together) can
// see the same directory go, and one of them answers 500 (ENOENT), where
// S3 deletes a key whatever happens to its neighbours.  (The recursive rm
// could also take an object PUT under that prefix meanwhile.)  Remove
// each emptied directory with rmdir, which only removes an empty one, and
// stop at the first that is gone or not empty.
FilesystemStore.prototype.deleteObject = async function (bucket, key) {
  await Promise.all(['object', 'object.md5', 'metadata.json'].map((t) =>
    fs.promises.unlink(this.getResourcePath(bucket, key, t)).catch((err) => {
      if (err.code !== 'ENOENT') throw err;
    })));
  const parts = key.split('/');
  parts.pop();                      // the object's own name
  while (parts.length) {
    try {
      await fs.promises.rmdir(path.join(this.getBucketPath(bucket), ...parts));
    } catch (err) {
      if (['ENOENT', 'ENOTEMPTY', 'EEXIST'].includes(err.code)) break;
      throw err;
    }
    parts.pop();
  }
};

// s3rver takes a part for an upload it does not know (it creates the
// upload's directory) and fails its Complete with a 500; S3 answers 404
// NoSuchUpload to both, once an upload was completed or aborted (by a
// bucket's lifecycle rule, say).  Answer as S3 does.
const S3Error = require('@20minutes/s3rver/lib/models/error');
async function uploadKnown(store, bucket, uploadId) {
  const keyFile = path.join(store.getResourcePath(bucket, undefined, 'uploads'),
                            String(uploadId), 'key');
  try {
    await fs.promises.access(keyFile);
  } catch (err) {
    throw new S3Error('NoSuchUpload', 'The specified upload does not exist.',
                      { UploadId: uploadId });
  }
}
for (const name of ['putPart', 'putObjectMultipart']) {
  const real = FilesystemStore.prototype[name];
  FilesystemStore.prototype[name] = async function (bucket, uploadId, ...rest) {
    await uploadKnown(this, bucket, uploadId);
    return real.call(this, bucket, uploadId, ...rest);
  };
}

require('@20minutes/s3rver/lib/cli').parseAsync(process.argv);
