// Validates KEDA resources (JSON documents on stdin, an array) against KEDA's own schemas, as packaged by
// @kubernetes-models/keda (generated from KEDA's API types). Prints one line per problem; exits 1 if any.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";

const models = { ScaledObject, TriggerAuthentication };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let failed = false;
for (const document of JSON.parse(Buffer.concat(chunks).toString())) {
  const Model = models[document.kind];
  try {
    if (!Model) throw new Error(`no KEDA schema for kind ${document.kind}`);
    new Model(document).validate();
  } catch (error) {
    failed = true;
    console.log(`${document.kind}/${document.metadata?.name}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
