# Third-party sources at pinned commits: TensorFlow Lite Micro (main of 2026-08-20) and the
# revisions its own build pins. With network access they are fetched from upstream; for offline
# builds set SER_DEPS_DIR (CMake variable or environment) to a folder holding local copies named
# tflite-micro/ flatbuffers/ gemmlowp/ ruy/ CMSIS_6/ CMSIS-NN/ Cortex_DFP/ kissfft/.
include_guard(GLOBAL)
include(FetchContent)

set(SER_PINS
  "tflite-micro|https://github.com/tensorflow/tflite-micro.git|90b983c2b3f1480642e040bbd2ddb37b998f3424"
  "flatbuffers|https://github.com/google/flatbuffers.git|187240970746d00bbd26b0f5873ed54d2477f9f3"  # v25.9.23
  "gemmlowp|https://github.com/google/gemmlowp.git|719139ce755a0f31cbf1c37f7f98adcc7fc9f425"
  "ruy|https://github.com/google/ruy.git|d37128311b445e758136b8602d1bbd2a755e115d"
  "CMSIS_6|https://github.com/ARM-software/CMSIS_6.git|5782d6f8057906d360f4b95ec08a2354afe5c9b9"
  "CMSIS-NN|https://github.com/ARM-software/CMSIS-NN.git|4ab83cc3cc98fb85ed6dafb55e8ca02f1628dcae"
  "Cortex_DFP|https://github.com/ARM-software/Cortex_DFP.git|c2c70a97a20fb355815e2ead3d4a40e35a4a3cdf"
  "kissfft|https://github.com/mborgerding/kissfft.git|918336beac80868ad3011cb283063bb224e3e5da"  # v130
)

if(NOT SER_DEPS_DIR AND DEFINED ENV{SER_DEPS_DIR})
  set(SER_DEPS_DIR "$ENV{SER_DEPS_DIR}")
endif()
set(SER_DEPS_DIR "${SER_DEPS_DIR}" CACHE PATH "Local copies of the third-party sources (offline builds); empty: fetch from upstream")

# Sets SER_DIR_<name> for every pinned dependency.
foreach(pin IN LISTS SER_PINS)
  string(REPLACE "|" ";" fields "${pin}")
  list(GET fields 0 name)
  list(GET fields 1 url)
  list(GET fields 2 commit)
  string(MAKE_C_IDENTIFIER "${name}" id)
  list(APPEND SER_PIN_SUMMARY "${name}@${commit}")
  if(SER_DIR_${id})
    continue()  # handed down by a parent project
  elseif(SER_DEPS_DIR)
    set(dir "${SER_DEPS_DIR}/${name}")
    if(NOT EXISTS "${dir}")
      message(FATAL_ERROR "SER_DEPS_DIR=${SER_DEPS_DIR} has no ${name}/ folder: unpack ${url} at commit ${commit} there.")
    endif()
  else()
    string(TOLOWER "ser_${id}" fc_name)
    FetchContent_Declare(${fc_name} GIT_REPOSITORY "${url}" GIT_TAG "${commit}" GIT_PROGRESS TRUE)
    FetchContent_GetProperties(${fc_name})
    if(NOT ${fc_name}_POPULATED)
      message(STATUS "Fetching ${name} at ${commit} (set SER_DEPS_DIR to build offline)")
      FetchContent_Populate(${fc_name})
    endif()
    set(dir "${${fc_name}_SOURCE_DIR}")
  endif()
  set(SER_DIR_${id} "${dir}")
endforeach()
