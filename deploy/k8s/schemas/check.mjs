// Checks custom resources (a JSON array on stdin) against their projects' schemas; prints a JSON array of
// problems, empty when every object is valid. Two checks, both from the @kubernetes-models packages:
//   - the schema validators: types, enums, patterns, required fields;
//   - the TypeScript interfaces, compiled with tsc: a field the schema does not know (a misspelling) is an
//     error, which the validators alone let through.
// Usage: node check.mjs < objects.json   (tests/unit/test_k8s.py runs it on every rendered overlay)
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));

// API group -> the package holding its models.
const PACKAGES = {
  "cert-manager.io": "@kubernetes-models/cert-manager",
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "postgresql.cnpg.io": "@kubernetes-models/cloudnative-pg",
};

function modulePath(obj) {
  const [group] = obj.apiVersion.split("/");
  const pkg = PACKAGES[group];
  return pkg ? `${pkg}/${obj.apiVersion}/${obj.kind}` : null;
}

const name = (obj) => `${obj.kind}/${obj.metadata?.name}`;
const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
const typed = [];
const typedNames = [];

for (const [index, obj] of objects.entries()) {
  const where = modulePath(obj);
  if (!where) {
    problems.push({ object: name(obj), problem: `no schema for ${obj.apiVersion} ${obj.kind}` });
    continue;
  }
  let Model;
  try {
    Model = (await import(where))[obj.kind];
  } catch {
    problems.push({ object: name(obj), problem: `no schema for ${obj.apiVersion} ${obj.kind}` });
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (error) {
    problems.push({ object: name(obj), problem: error.message });
  }
  typedNames.push(name(obj));
  typed.push(`import type { I${obj.kind} as T${index} } from "${where}";\nexport const o${index}: T${index} = ${JSON.stringify(obj)};\n`);
}

// The typed constants live in a file that exists only in memory, next to node_modules.
const source = path.join(here, "__objects__.ts");
const text = typed.join("");
const options = {
  noEmit: true,
  strict: true,
  skipLibCheck: true,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  target: ts.ScriptTarget.ES2022,
};
const host = ts.createCompilerHost(options);
const getSourceFile = host.getSourceFile;
host.getSourceFile = (file, language, ...rest) =>
  file === source ? ts.createSourceFile(file, text, language) : getSourceFile.call(host, file, language, ...rest);
const fileExists = host.fileExists;
host.fileExists = (file) => file === source || fileExists.call(host, file);
const readFile = host.readFile;
host.readFile = (file) => (file === source ? text : readFile.call(host, file));
const program = ts.createProgram([source], options, host);
for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
  const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n");
  let object = "";
  if (diagnostic.file && diagnostic.start !== undefined) {
    const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
    object = typedNames[Math.floor(line / 2)] ?? "";
  }
  problems.push({ object, problem: message });
}
process.stdout.write(JSON.stringify(problems));
