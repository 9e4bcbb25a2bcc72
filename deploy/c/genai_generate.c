/* Greedy generation from an rwkv-deploy GenAI folder (`rwkv-deploy package PKG --genai DIR`) through the
 * ONNX Runtime GenAI C API. Token ids in, token ids out (one per line), so it runs with any tokenizer:
 *
 *   genai_generate FOLDER N TOKEN [TOKEN...]
 *
 * Build: cc genai_generate.c -I<dir of ort_genai_c.h> -L<dir of libonnxruntime-genai.so> -lonnxruntime-genai
 * (the Python wheel `onnxruntime-genai` ships the library; the headers are in shared/vendor). */
#include <stdio.h>
#include <stdlib.h>

#include "ort_genai_c.h"

static int failed(OgaResult *result, const char *what) {
  if (result == NULL) return 0;
  fprintf(stderr, "genai_generate: %s: %s\n", what, OgaResultGetError(result));
  OgaDestroyResult(result);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s FOLDER N TOKEN [TOKEN...]\n", argv[0]);
    return 2;
  }
  long n = strtol(argv[2], NULL, 10);
  size_t count = (size_t)(argc - 3);
  int32_t *prompt = malloc(count * sizeof *prompt);
  if (n <= 0 || prompt == NULL) {
    fprintf(stderr, "genai_generate: N must be a positive number\n");
    return 2;
  }
  for (size_t i = 0; i < count; i++) prompt[i] = (int32_t)strtol(argv[3 + i], NULL, 10);

  OgaModel *model = NULL;
  OgaGeneratorParams *params = NULL;
  OgaGenerator *generator = NULL;
  int rc = 1;
  if (failed(OgaCreateModel(argv[1], &model), "loading the folder")) goto done;
  if (failed(OgaCreateGeneratorParams(model, &params), "generator params")) goto done;
  if (failed(OgaGeneratorParamsSetSearchNumber(params, "max_length", (double)(count + (size_t)n)), "max_length"))
    goto done;
  if (failed(OgaCreateGenerator(model, params, &generator), "creating the generator")) goto done;
  if (failed(OgaGenerator_AppendTokens(generator, prompt, count), "feeding the prompt")) goto done;
  for (long i = 0; i < n && !OgaGenerator_IsDone(generator); i++) {
    const int32_t *next = NULL;
    size_t next_count = 0;
    if (failed(OgaGenerator_GenerateNextToken(generator), "generating")) goto done;
    if (failed(OgaGenerator_GetNextTokens(generator, &next, &next_count), "reading the token")) goto done;
    printf("%d\n", next[0]);
  }
  rc = 0;
done:
  if (generator) OgaDestroyGenerator(generator); /* the Destroy functions do not take NULL */
  if (params) OgaDestroyGeneratorParams(params);
  if (model) OgaDestroyModel(model);
  free(prompt);
  return rc;
}
