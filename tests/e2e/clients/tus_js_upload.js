// Uploads a file with tus-js-client (Node), stopping after the first chunk, then resumes it
// with a second Upload given the first one's URL. Prints one JSON line: the URL and the
// offsets each chunk ended at. Usage: node tus_js_upload.js ENDPOINT FILE CHUNK_SIZE
// (NODE_PATH names the folder tus-js-client is installed in).
const fs = require("fs");
const tus = require("tus-js-client");

const [endpoint, file, chunkSize] = process.argv.slice(2);
const data = fs.readFileSync(file);

function run(options) {
  return new Promise((resolve, reject) => {
    const ended = [];
    const upload = new tus.Upload(data, {
      endpoint,
      chunkSize: Number(chunkSize),
      metadata: { filename: "clip.png", filetype: "image/png" },
      retryDelays: [],
      ...options,
      onChunkComplete(_size, accepted) {
        ended.push(accepted);
        if (options.stopAfterFirst) {
          upload.abort().then(() => resolve({ url: upload.url, ended }));
        }
      },
      onSuccess() { resolve({ url: upload.url, ended }); },
      onError: reject,
    });
    upload.start();
  });
}

(async () => {
  const first = await run({ stopAfterFirst: true });
  const second = await run({ uploadUrl: first.url });
  console.log(JSON.stringify({ first, second }));
})().catch((err) => { console.error(String(err)); process.exit(1); });
