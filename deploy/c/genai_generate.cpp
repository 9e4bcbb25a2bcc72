// The C++ twin of genai_generate.c, through ort_genai.h (RAII wrappers; errors arrive as exceptions):
//
//   genai_generate_cpp FOLDER N TOKEN [TOKEN...]
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "ort_genai.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s FOLDER N TOKEN [TOKEN...]\n", argv[0]);
    return 2;
  }
  try {
    const long n = std::stol(argv[2]);
    std::vector<int32_t> prompt;
    for (int i = 3; i < argc; i++) prompt.push_back(static_cast<int32_t>(std::stol(argv[i])));

    auto model = OgaModel::Create(argv[1]);
    auto params = OgaGeneratorParams::Create(*model);
    params->SetSearchOption("max_length", static_cast<double>(prompt.size() + n));
    auto generator = OgaGenerator::Create(*model, *params);
    generator->AppendTokens(prompt.data(), prompt.size());
    for (long i = 0; i < n && !generator->IsDone(); i++) {
      generator->GenerateNextToken();
      std::printf("%d\n", generator->GetNextTokens()[0]);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "genai_generate_cpp: %s\n", e.what());
    return 1;
  }
  return 0;
}
