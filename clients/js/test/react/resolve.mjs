// A module resolve hook for the hook's test: 'react' is the small hooks
// runtime beside this file (the client has no React of its own to test with).
export async function resolve(specifier, context, next) {
  if (specifier === 'react') {
    return { url: new URL('./hooks-runtime.mjs', import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
