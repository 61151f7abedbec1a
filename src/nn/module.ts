/**
 * Module and Parameter: the containers models are built from (torch.nn.Module's shape).
 *
 * Submodules and parameters are registered explicitly (`this.param(...)`, `this.module(...)`),
 * so `namedParameters()` is deterministic and mirrors Hugging Face names when the model uses
 * them. Parameter memory is counted under the "params" category and survives scopes.
 *
 * Forward hooks (torch's register_forward_pre_hook / register_forward_hook) let code outside a
 * model act around a module's forward without the model knowing: FSDP-style parameter sharding
 * gathers a block's weights before it runs and releases them after. Models call
 * `child.forward(x)` directly (there is no `__call__`), so the first hook registered on a module
 * installs one dispatcher as that instance's `forward`, which runs the hooks around the class's
 * method; a module without hooks is untouched.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { Tensor, Category, keep, noGradScope } from "./_deps.js";

/** A trainable tensor: a leaf that requires grad, kept alive across scopes. */
export type Parameter = Tensor;

/** Turns a tensor into a parameter in place: requiresGrad, "params" memory, not scope-tracked. */
export function asParameter(t: Tensor, requiresGrad = true): Parameter {
  if (t.dtype !== "float32" && t.dtype !== "bfloat16" && t.dtype !== "float16") {
    throw new ValueError(`parameter must be a floating tensor (float32, bfloat16, float16), got ${t.dtype}`);
  }
  t.storage.setCategory(Category.params);
  keep(t);
  t.requiresGrad = requiresGrad;
  return t;
}

/** Runs before a module's forward, with its arguments. */
export type ForwardPreHook = (module: Module, args: readonly unknown[]) => void;
/** Runs after a module's forward returned; a value other than `undefined` replaces the output. */
export type ForwardHook = (module: Module, args: readonly unknown[], output: unknown) => unknown;

/** Options of `registerForwardHook()`. */
export interface ForwardHookOptions {
  /**
   * Called instead of the hook when the forward itself throws, before the error propagates:
   * undo what a pre-hook acquired. Default: nothing.
   */
  onError?: (module: Module, error: unknown) => void;
}

/** Removes a hook again. */
export type RemoveHandle = () => void;

interface Hooks {
  pre: ForwardPreHook[];
  post: Array<{ fn: ForwardHook; onError?: (module: Module, error: unknown) => void }>;
}

/** Base class for layers and models. */
export class Module {
  /** Dropout and similar layers behave differently in training. */
  training = true;
  private readonly _params = new Map<string, Parameter>();
  private readonly _modules = new Map<string, Module>();
  private _hooks: Hooks | null = null;

  /**
   * Registers `fn` to run before every forward of this module (pre-hooks run in registration order).
   * @example
   * const remove = block.registerForwardPreHook(() => gather(block));
   */
  registerForwardPreHook(fn: ForwardPreHook): RemoveHandle {
    const hooks = this.installHooks();
    hooks.pre.push(fn);
    return () => { hooks.pre = hooks.pre.filter((h) => h !== fn); };
  }

  /**
   * Registers `fn` to run after every forward of this module, in registration order; each may
   * replace the output by returning a value.
   * @example
   * block.registerForwardHook((_m, _args, out) => release(block), { onError: () => release(block) });
   */
  registerForwardHook(fn: ForwardHook, opts: ForwardHookOptions = {}): RemoveHandle {
    const hooks = this.installHooks();
    const entry = { fn, ...(opts.onError ? { onError: opts.onError } : {}) };
    hooks.post.push(entry);
    return () => { hooks.post = hooks.post.filter((h) => h !== entry); };
  }

  /** Installs the dispatcher that runs hooks around this instance's forward (once). */
  private installHooks(): Hooks {
    if (this._hooks) return this._hooks;
    const hooks: Hooks = { pre: [], post: [] };
    this._hooks = hooks;
    const self = this as unknown as { forward?: (...args: unknown[]) => unknown };
    const inner = self.forward;
    if (typeof inner !== "function") throw new ValueError(`${this.constructor.name} has no forward() to hook`);
    self.forward = (...args: unknown[]): unknown => {
      for (const h of hooks.pre) h(this, args);
      let out: unknown;
      try {
        out = inner.apply(this, args);
      } catch (e) {
        for (const h of hooks.post) h.onError?.(this, e);
        throw e;
      }
      for (const h of hooks.post) {
        const r = h.fn(this, args, out);
        if (r !== undefined) out = r;
      }
      return out;
    };
    return hooks;
  }

  /** Registers (and returns) a parameter under `name`. */
  protected param(name: string, t: Tensor, requiresGrad = true): Parameter {
    if (this._params.has(name)) throw new ValueError(`parameter ${name} is already registered`);
    const p = asParameter(t, requiresGrad);
    p.name = name;
    this._params.set(name, p);
    return p;
  }

  /** Registers (and returns) a submodule under `name`. */
  protected module<M extends Module>(name: string, m: M): M {
    if (this._modules.has(name)) throw new ValueError(`submodule ${name} is already registered`);
    this._modules.set(name, m);
    return m;
  }

  /**
   * Registers, replaces (same name) or removes (null) the submodule `name`, like PyTorch's
   * `setattr(module, name, child)`: a field of that name holding the old child is updated
   * too, so `block.attn.c_attn` and `namedParameters()` stay in agreement. This is how a
   * module swap (Int8Linear for Linear) changes a model without the model knowing.
   * @example
   * block.attn.setModule("c_attn", Int8Linear.fromLinear(block.attn.c_attn as Linear));
   */
  setModule(name: string, m: Module | null): void {
    const old = this._modules.get(name) ?? null;
    if (m) this._modules.set(name, m);
    else this._modules.delete(name);
    const self = this as unknown as Record<string, unknown>;
    if (Object.prototype.hasOwnProperty.call(this, name) && (self[name] === old || self[name] === null)) self[name] = m;
  }

  /** The submodule at a dotted path (`"h.0.attn.c_attn"`); "" is this module. */
  getSubmodule(path: string): Module {
    if (path === "") return this;
    // Names may contain dots themselves (GPT's "h.0"): try the longest registered prefix first.
    for (let end = path.length; end > 0; end = path.lastIndexOf(".", end - 1)) {
      const child = this._modules.get(path.slice(0, end));
      if (child) return end === path.length ? child : child.getSubmodule(path.slice(end + 1));
    }
    throw new ValueError(`getSubmodule: no submodule at '${path}' (children: ${JSON.stringify([...this._modules.keys()])})`);
  }

  /** Replaces a registered parameter's tensor (weight tying, loading). */
  protected setParam(name: string, t: Parameter): void {
    if (!this._params.has(name)) throw new ValueError(`no parameter named ${name}`);
    this._params.set(name, t);
  }

  /** All parameters with dotted names, in registration order (shared tensors listed once). */
  namedParameters(prefix = "", seen = new Set<Tensor>()): Array<[string, Parameter]> {
    const out: Array<[string, Parameter]> = [];
    for (const [n, p] of this._params) {
      if (seen.has(p)) continue;
      seen.add(p);
      out.push([prefix + n, p]);
    }
    for (const [n, m] of this._modules) out.push(...m.namedParameters(`${prefix}${n}.`, seen));
    return out;
  }

  parameters(): Parameter[] {
    return this.namedParameters().map(([, p]) => p);
  }

  namedModules(prefix = ""): Array<[string, Module]> {
    const out: Array<[string, Module]> = [[prefix.replace(/\.$/, ""), this]];
    for (const [n, m] of this._modules) out.push(...m.namedModules(`${prefix}${n}.`));
    return out;
  }

  /** Sets training mode on this module and every submodule. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Clears (disposes) every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Number of parameter elements. */
  numParameters(): number {
    return this.parameters().reduce((s, p) => s + p.numel, 0);
  }

  /** name -> tensor (the parameters themselves, not copies). */
  stateDict(): Map<string, Parameter> {
    return new Map(this.namedParameters());
  }

  /** Copies values from `state` into the parameters; every name must match in shape. */
  loadStateDict(state: Map<string, Tensor>, opts: { strict?: boolean } = {}): void {
    const strict = opts.strict ?? true;
    const own = new Map(this.namedParameters());
    if (strict) {
      const missing = [...own.keys()].filter((k) => !state.has(k));
      const unexpected = [...state.keys()].filter((k) => !own.has(k));
      if (missing.length || unexpected.length) {
        throw new ValueError(`loadStateDict: missing ${JSON.stringify(missing)}, unexpected ${JSON.stringify(unexpected)}`);
      }
    }
    noGradScope(() => {
      for (const [k, p] of own) {
        const src = state.get(k);
        if (!src) continue;
        if (src.shape.length !== p.shape.length || src.shape.some((s, i) => s !== p.shape[i])) {
          throw new ValueError(`loadStateDict: ${k} has shape ${fmtShape(src.shape)} in the state, ${fmtShape(p.shape)} in the model`);
        }
        p.copy_(src);
      }
    });
  }

  /**
   * Converts every floating parameter to `dtype` in place (torch's `module.to(dtype)`): the
   * parameter tensors keep their identity, so tied weights stay tied and references held
   * elsewhere see the new data. Gradients are dropped. For serving in bfloat16; training keeps
   * float32 parameters and uses a precision policy (autocast) instead.
   * @example
   * model.to("bfloat16");   // half the weight bytes per decoded token
   */
  to(dtype: "float32" | "bfloat16" | "float16"): this {
    noGradScope(() => {
      for (const p of this.parameters()) {
        if (p.dtype === dtype) continue;
        const c = p.to(dtype);
        c.storage.setCategory(Category.params);
        p.setData_(c);
      }
    });
    return this;
  }
}
