# Configures, builds and runs the consumer project in one way of bringing in torchfit (MODE).
file(REMOVE_RECURSE ${BINARY})
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY} -DMODE=${MODE} -DTORCHFIT_SOURCE_DIR=${TORCHFIT_SOURCE_DIR}
          -DTRACKER_TARGETS=${TRACKER_TARGETS}
          "-DCMAKE_PREFIX_PATH=${PREFIX_PATH}" -DCMAKE_CXX_COMPILER=${CXX}
  RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the ${MODE} consumer failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY} RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the ${MODE} consumer failed")
endif()
execute_process(COMMAND ${BINARY}/consumer ${BINARY}/state.json RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the ${MODE} consumer failed")
endif()
