/**
 * Generates native/src/_kernels.gen.inc from the kernel table in src/backend/kernels.ts.
 *
 *   node --import tsx scripts/gen_kernels.ts          # (re)writes the file
 *   node --import tsx scripts/gen_kernels.ts --check  # exits 1 if the committed file is stale
 *
 * The generated file has three parts, each behind a macro so one file serves three readers:
 *  - MG_GEN_ENUMS (megalith.h): the C++ enums of OP_CODES (BinaryOp, UnaryOp, ..., DType);
 *  - MG_GEN_API (megalith.h): `namespace mg::api { ... }`, one typed declaration per kernel,
 *    whose bodies are hand-written in native/src/api.cc;
 *  - MG_GEN_NAPI (addon.cc): one N-API wrapper per kernel (argument count and type checks,
 *    unpacking) and the registration list `kGeneratedKernels`.
 * The file is committed, so building the addon never needs tsx.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { KERNELS, OP_CODES, type ArgKind, type KernelSpec } from "../src/backend/kernels.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
/** The generated files: the declarations megalith.h includes, and the N-API wrappers addon.cc includes. */
export const GENERATED_HEADER = join(ROOT, "native", "src", "_kernels.gen.h");
export const GENERATED_PATH = join(ROOT, "native", "src", "_kernels.gen.inc");

/**
 * C++ enumerator names. By default `k` + the key in PascalCase (add -> kAdd); the exceptions keep
 * the names the C++ already used where the default would collide inside namespace mg
 * (ReduceOp max/min vs BinaryOp max/min) or where the short dtype names read better.
 */
const CPP_NAME_OVERRIDES: Record<string, Record<string, string>> = {
  ReduceOp: { max: "kMaxR", min: "kMinR" },
  ArgReduceOp: { argmax: "kArgMax", argmin: "kArgMin" },
  DType: { float32: "kF32", bfloat16: "kBF16", int32: "kI32", int8: "kI8", uint8: "kU8", float16: "kF16" },
};

const CPP_TYPE: Record<ArgKind, string> = {
  view: "void*",
  "view?": "void*",
  i64: "int64_t",
  f64: "double",
  bool: "bool",
  dims: "const mg::Dims&",
  dtype: "int",
  op: "int",
};

/** The KernelArgs method (addon.cc) that unpacks an argument of each kind. */
const UNPACK: Record<ArgKind, string> = {
  view: "view",
  "view?": "optView",
  i64: "i64",
  f64: "f64",
  bool: "flag",
  dims: "dims",
  dtype: "dtype",
  op: "op",
};

const pascal = (s: string) => s[0]!.toUpperCase() + s.slice(1);

function cppEnumerator(en: string, key: string): string {
  return CPP_NAME_OVERRIDES[en]?.[key] ?? `k${pascal(key)}`;
}

/** A C++ parameter name that is never a keyword or a macro-ish clash. */
function param(name: string): string {
  return `${name}_`;
}

function enums(): string {
  const out: string[] = ["namespace mg {"];
  const seen = new Map<string, string>();
  for (const [en, codes] of Object.entries(OP_CODES)) {
    const items = Object.entries(codes as Record<string, number>).map(([k, v]) => {
      const name = cppEnumerator(en, k);
      const prev = seen.get(name);
      if (prev) throw new Error(`gen_kernels: C++ enumerator ${name} of ${en}.${k} collides with ${prev}; add an override`);
      seen.set(name, `${en}.${k}`);
      return `${name} = ${v}`;
    });
    out.push(`enum ${en} { ${items.join(", ")} };`);
  }
  const dt = OP_CODES.DType as Record<string, number>;
  out.push("// dtype names as the TypeScript side spells them, indexed by code (nullptr: no such code).");
  const maxCode = Math.max(...Object.values(dt));
  const names = Array.from({ length: maxCode + 1 }, (_, c) => {
    const n = Object.entries(dt).find(([, v]) => v === c)?.[0];
    return n ? `"${n}"` : "nullptr";
  });
  out.push(`constexpr const char* kDTypeNames[${maxCode + 1}] = {${names.join(", ")}};`);
  out.push(`constexpr int kNumDTypeCodes = ${maxCode + 1};`);
  out.push("}  // namespace mg");
  return out.join("\n");
}

function signature(name: string, spec: KernelSpec): string {
  const ret = spec.returns === "i64" ? "int64_t" : "void";
  const args = spec.args.map(([n, k]) => `${CPP_TYPE[k]} ${param(n)}`).join(", ");
  return `${ret} ${name}(${args})`;
}

function apiDecls(): string {
  const out = ["namespace mg::api {"];
  for (const [name, spec] of Object.entries(KERNELS) as [string, KernelSpec][]) {
    out.push(`// ${spec.doc}`);
    out.push(`${signature(name, spec)};`);
  }
  out.push("}  // namespace mg::api");
  return out.join("\n");
}

/** Trailing dtype arguments may be omitted (float32) while TypeScript callers move to passing them. */
function requiredArgs(spec: KernelSpec): number {
  let n = spec.args.length;
  while (n > 0 && spec.args[n - 1]![1] === "dtype") n--;
  return n;
}

function wrappers(): string {
  const out: string[] = [];
  const reg: string[] = [];
  for (const [name, spec] of Object.entries(KERNELS) as [string, KernelSpec][]) {
    const fn = `Gen_${name}`;
    const need = requiredArgs(spec);
    out.push(`napi_value ${fn}(napi_env env, napi_callback_info info) {`);
    out.push(`  KernelArgs a(env, info, "${name}", ${need}, ${spec.args.length});`);
    out.push("  if (!a.ok) return nullptr;");
    spec.args.forEach(([n, k], i) => {
      const decl = k === "dims" ? "mg::Dims" : CPP_TYPE[k];
      out.push(`  ${decl} ${param(n)} = a.${UNPACK[k]}(${i}, "${n}");`);
    });
    out.push("  if (!a.ok) return nullptr;");
    const call = `mg::api::${name}(${spec.args.map(([n]) => param(n)).join(", ")})`;
    out.push("  try {");
    if (spec.returns === "i64") out.push(`    return a.number(static_cast<double>(${call}));`);
    else out.push(`    ${call};`);
    out.push("  } catch (const std::exception& e) {");
    out.push("    a.raise(e.what());  // api.cc messages already name the kernel");
    out.push("    return nullptr;");
    out.push("  }");
    if (spec.returns !== "i64") out.push("  return a.undefined();");
    out.push("}");
    out.push("");
    reg.push(`    {"${name}", ${fn}},`);
  }
  out.push("// The kernels, registered by Init in addon.cc beside the hand-written utilities.");
  out.push("const struct { const char* name; napi_callback cb; } kGeneratedKernels[] = {");
  out.push(...reg);
  out.push("};");
  return out.join("\n");
}

const BANNER = [
  "// GENERATED by scripts/gen_kernels.ts from src/backend/kernels.ts: do not edit.",
  "// Regenerate: node --import tsx scripts/gen_kernels.ts   (a test checks this file is current)",
  "",
];

/** native/src/_kernels.gen.h: the op-code enums and the mg::api declarations. */
export function generateHeader(): string {
  return [
    ...BANNER,
    "#if defined(MG_GEN_ENUMS) && !defined(MG_GEN_ENUMS_DONE)",
    "#define MG_GEN_ENUMS_DONE",
    enums(),
    "#endif  // MG_GEN_ENUMS",
    "",
    "#if defined(MG_GEN_API) && !defined(MG_GEN_API_DONE)",
    "#define MG_GEN_API_DONE",
    apiDecls(),
    "#endif  // MG_GEN_API",
    "",
  ].join("\n");
}

/** native/src/_kernels.gen.inc: one N-API wrapper per kernel and the registration list. */
export function generate(): string {
  return [
    ...BANNER,
    "#if defined(MG_GEN_NAPI) && !defined(MG_GEN_NAPI_DONE)",
    "#define MG_GEN_NAPI_DONE",
    "// Needs KernelArgs (addon.cc) in scope.",
    wrappers(),
    "#endif  // MG_GEN_NAPI",
    "",
  ].join("\n");
}

function main(argv: string[]): void {
  for (const [path, text] of [[GENERATED_HEADER, generateHeader()], [GENERATED_PATH, generate()]] as const) {
    if (argv.includes("--check")) {
      let current = "";
      try {
        current = readFileSync(path, "utf8");
      } catch {
        // missing: stale
      }
      if (current !== text) {
        console.error(`gen_kernels: ${path} is stale (src/backend/kernels.ts changed). Run \`node --import tsx scripts/gen_kernels.ts\` and commit the result.`);
        process.exit(1);
      }
      console.log(`gen_kernels: ${path} is current`);
      continue;
    }
    writeFileSync(path, text);
    console.log(`gen_kernels: wrote ${path} (${Object.keys(KERNELS).length} kernels)`);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main(process.argv.slice(2));
