// Ambient module types for non-code imports (the YAML contract).
declare module "*.yaml" {
  const document: unknown;
  export default document;
}
