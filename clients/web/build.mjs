// The SDK (dist/splitserve.js, one ES module, onnxruntime-web's JS inside) and the demo page
// (dist/demo/: the page, its script, and onnxruntime's .wasm that the SDK loads at run time).
import { copyFileSync, mkdirSync } from "node:fs";
import { build } from "esbuild";

const common = { bundle: true, format: "esm", target: "es2022", minify: true, sourcemap: true, logLevel: "info" };
await build({ ...common, entryPoints: ["src/index.ts"], outfile: "dist/splitserve.js" });
await build({ ...common, entryPoints: ["demo/demo.ts"], outfile: "dist/demo/demo.js" });
mkdirSync("dist/demo/ort", { recursive: true });
copyFileSync("demo/index.html", "dist/demo/index.html");
copyFileSync("dist/splitserve.js", "dist/demo/splitserve.js"); // the SDK itself, for <script type="module"> pages
for (const f of ["ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs"]) {
  copyFileSync(`node_modules/onnxruntime-web/dist/${f}`, `dist/demo/ort/${f}`);
}
